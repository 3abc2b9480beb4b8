"""Domain rows -> protobuf messages (the only place that knows both)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from google.protobuf import timestamp_pb2

from ferry_proto.region.v1 import resources_pb2 as pb

from ..db.models import Task
from ..db.server_reads import ServerRecord
from ..domain.hosts import HostView
from ..domain.images import ImageView
from ..states import to_proto


def ts(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    t = timestamp_pb2.Timestamp()
    t.FromDatetime(value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC))
    return t


def host(view: HostView) -> pb.Host:
    h, u = view.host, view.usage
    msg = pb.Host(
        id=h.id, name=h.name, access_address=h.access_address, status=to_proto(h.status),
        host_status=to_proto(h.host_status), enabled=h.enabled, hypervisor=h.hypervisor,
        cpu_model=h.cpu_model, cpu_microcode=h.cpu_microcode, kernel_version=h.kernel_version,
        accelerator=to_proto(h.accelerator), cpu_count=h.cpu_count, cpu_used=u.cpu_used,
        cpu_cmtbound=h.cpu_cmtbound, mem_size_mb=h.mem_size_mb, mem_used_mb=u.mem_used_mb,
        mem_cmtbound=h.mem_cmtbound, mem_reserved_mb=h.mem_reserved_mb, wire=h.wire,
        networks=[n.network for n in h.networks],
        auto_migrate_on_host_down=h.auto_migrate_on_host_down,
        auto_migrate_on_host_shutdown=h.auto_migrate_on_host_shutdown,
        server_count=u.server_count, agent_version=h.agent_version)
    for m in h.storages:
        st = m.storage
        msg.storages.add(storage_id=m.storage_id, name=st.name if st else m.storage_id,
                         kind=to_proto(st.kind) if st else 0, path=m.path,
                         capacity_mb=st.capacity_mb if st else 0,
                         free_mb=st.free_mb if st else 0)
    if h.registered_at is not None:
        msg.registered_at.CopyFrom(ts(h.registered_at))
    return msg


def progress(p: dict[str, Any]) -> pb.MigrationProgress:
    msg = pb.MigrationProgress()
    for key, value in p.items():
        if key == "updated_at" or key not in pb.MigrationProgress.DESCRIPTOR.fields_by_name:
            continue
        setattr(msg, key, value)
    if p.get("updated_at"):
        msg.updated_at.FromJsonString(p["updated_at"])
    return msg


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_PB: dict[Any, int] = {}


def _pb(value: Any) -> int:
    """to_proto with a memo (the read paths convert thousands of enum values)."""
    try:
        return _PB[value]
    except KeyError:
        number = _PB[value] = to_proto(value)
        return number


def _set_ts(target: timestamp_pb2.Timestamp, value: dt.datetime | None) -> None:
    if value is None:
        return
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    delta = value - _EPOCH
    target.seconds = delta.days * 86400 + delta.seconds
    target.nanos = delta.microseconds * 1000


def server_record(rec: ServerRecord, *, details: bool = True) -> pb.Server:
    """A server from the Core read model (db.server_reads)."""
    s = rec.row
    msg = pb.Server(
        id=s.id, name=s.name, status=_pb(s.status), host_id=s.host_id or "",
        host_name=s.host_name or "", vcpu_count=s.vcpu_count, memory_mb=s.memory_mb,
        image_id=s.image_id or "", task_id=s.task_id or "", status_reason=s.status_reason or "",
        project=s.project)
    _set_ts(msg.created_at, s.created_at)
    _set_ts(msg.updated_at, s.updated_at)
    if details:
        for d in rec.disks:
            msg.disks.add(id=d.id, index=d.index, storage_id=d.storage_id or "",
                          storage_kind=_pb(d.storage_kind) if d.storage_kind else 0,
                          size_mb=d.size_mb, format=_pb(d.format), path=d.path,
                          image_id=d.image_id or "")
        for n in rec.nics:
            msg.networks.add(network=n.network, mac=n.mac, index=n.index)
    if s.progress:
        msg.progress.CopyFrom(progress(s.progress))
    return msg


def image(view: ImageView) -> pb.Image:
    i = view.image
    msg = pb.Image(id=i.id, name=i.name, format=to_proto(i.format), size_bytes=i.size_bytes,
                   virtual_size_mb=i.virtual_size_mb, checksum_sha256=i.checksum_sha256,
                   status=to_proto(i.status), server_count=view.server_count,
                   min_memory_mb=i.min_memory_mb)
    msg.created_at.CopyFrom(ts(i.created_at))
    return msg


def task(t: Task) -> pb.Task:
    msg = pb.Task(id=t.id, kind=to_proto(t.kind), state=to_proto(t.state), stage=t.stage,
                  server_id=t.server_id, error=t.error or "", error_reason=t.error_reason or "",
                  history=list(t.history or []), resume_count=t.resume_count)
    msg.created_at.CopyFrom(ts(t.created_at))
    msg.updated_at.CopyFrom(ts(t.updated_at))
    return msg
