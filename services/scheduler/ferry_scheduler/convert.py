"""Proto <-> domain conversion, with input validation that names the field.

Kept apart from the servicer so the servicer stays "proto in, domain call,
proto out", and from the domain so filters never touch protobuf.
"""

from __future__ import annotations

from typing import Any

from ferry_proto.region.v1 import resources_pb2
from ferry_proto.scheduler.v1 import scheduler_pb2
from google.protobuf import timestamp_pb2

from .errors import InvalidRequest
from .model import (
    MIGRATION_KINDS,
    Candidate,
    DiskRequest,
    HostView,
    PlacementKind,
    PlacementRequest,
    PlacementResult,
    RejectedHost,
    StorageView,
)

MAX_VCPU = 4096
MAX_MEMORY_MB = 64 * 1024 * 1024          # 64 TiB
MAX_DISK_MB = 1024 * 1024 * 1024          # 1 PiB
MAX_DISKS = 64
MAX_NETWORKS = 64
MAX_EXCLUDED = 10_000
MAX_TTL_SECONDS = 24 * 3600
MAX_IDENT = 128


def _enum_label(enum_type: Any, value: int, prefix: str) -> str:
    try:
        name = enum_type.Name(value)
    except ValueError:
        return f"unknown({value})"
    return name.removeprefix(prefix).lower()


def _seconds(ts: timestamp_pb2.Timestamp) -> float:
    return ts.seconds + ts.nanos / 1e9


def host_from_proto(h: resources_pb2.Host) -> HostView:
    return HostView(
        id=h.id,
        name=h.name,
        running=h.status == resources_pb2.HOST_STATUS_RUNNING,
        status_name=_enum_label(resources_pb2.HostStatus, h.status, "HOST_STATUS_"),
        online=h.host_status == resources_pb2.HOST_HEALTH_ONLINE,
        health_name=_enum_label(resources_pb2.HostHealth, h.host_status, "HOST_HEALTH_"),
        enabled=h.enabled,
        cpu_model=h.cpu_model,
        cpu_microcode=h.cpu_microcode,
        kernel_version=h.kernel_version,
        cpu_count=h.cpu_count,
        cpu_used=h.cpu_used,
        cpu_cmtbound=h.cpu_cmtbound,
        mem_size_mb=h.mem_size_mb,
        mem_used_mb=h.mem_used_mb,
        mem_cmtbound=h.mem_cmtbound,
        mem_reserved_mb=h.mem_reserved_mb,
        storages=tuple(StorageView(id=s.storage_id, name=s.name,
                                   shared=s.kind == resources_pb2.STORAGE_KIND_SHARED,
                                   capacity_mb=s.capacity_mb, free_mb=s.free_mb)
                       for s in h.storages),
        wire=h.wire,
        networks=frozenset(h.networks),
        server_count=h.server_count,
        registered_at=_seconds(h.registered_at) if h.HasField("registered_at") else 0.0,
    )


# ---- requests ----

def _check_range(field: str, value: int, low: int, high: int) -> int:
    if value < low or value > high:
        raise InvalidRequest(field, f"must be between {low} and {high}, got {value}")
    return value


def _check_ident(field: str, value: str, *, required: bool = False) -> str:
    if not value:
        if required:
            raise InvalidRequest(field, "must not be empty")
        return value
    if len(value) > MAX_IDENT or not value.isprintable():
        raise InvalidRequest(field, f"must be at most {MAX_IDENT} printable characters")
    return value


def _check_kind(value: int) -> PlacementKind:
    if value == scheduler_pb2.PLACEMENT_KIND_UNSPECIFIED:
        return PlacementKind.CREATE
    try:
        return PlacementKind(value)
    except ValueError:
        kinds = scheduler_pb2.PlacementKind.keys()
        names = ", ".join(n for n in kinds if not n.endswith("_UNSPECIFIED"))
        raise InvalidRequest("kind", f"unknown value {value}; expected one of {names}") from None


def _kind_name(kind: PlacementKind) -> str:
    return scheduler_pb2.PlacementKind.Name(int(kind))


def _check_migration_fields(kind: PlacementKind, source_host_id: str, skip_cpu_check: bool,
                            skip_kernel_check: bool) -> None:
    """The migration fields must agree with the kind; the error names the field."""
    _check_ident("source_host_id", source_host_id)
    if kind in MIGRATION_KINDS and not source_host_id:
        raise InvalidRequest("source_host_id",
                             f"must name the server's current host for kind {_kind_name(kind)}")
    if kind not in MIGRATION_KINDS and source_host_id:
        raise InvalidRequest("source_host_id",
                             f"only for the migration kinds, got kind {_kind_name(kind)}")
    for field, value in (("skip_cpu_check", skip_cpu_check),
                         ("skip_kernel_check", skip_kernel_check)):
        if value and kind is not PlacementKind.LIVE_MIGRATE:
            raise InvalidRequest(field, f"only applies to kind PLACEMENT_KIND_LIVE_MIGRATE, got "
                                        f"kind {_kind_name(kind)}")


def _placement_request(req: scheduler_pb2.SelectHostRequest | scheduler_pb2.ForecastRequest,
                       ttl: int) -> PlacementRequest:
    r = req.requirements
    _check_ident("requirements.server_id", r.server_id)
    _check_range("requirements.vcpu_count", r.vcpu_count, 1, MAX_VCPU)
    _check_range("requirements.memory_mb", r.memory_mb, 1, MAX_MEMORY_MB)
    if len(r.disks) > MAX_DISKS:
        raise InvalidRequest("requirements.disks", f"at most {MAX_DISKS} disks, got {len(r.disks)}")
    disks = []
    for i, d in enumerate(r.disks):
        _check_range(f"requirements.disks[{i}].size_mb", d.size_mb, 0, MAX_DISK_MB)
        _check_ident(f"requirements.disks[{i}].storage_id", d.storage_id)
        disks.append(DiskRequest(size_mb=d.size_mb, shared=d.shared, storage_id=d.storage_id))
    if len(r.networks) > MAX_NETWORKS:
        raise InvalidRequest("requirements.networks",
                             f"at most {MAX_NETWORKS} networks, got {len(r.networks)}")
    for i, n in enumerate(r.networks):
        _check_ident(f"requirements.networks[{i}]", n, required=True)
    kind = _check_kind(req.kind)
    _check_ident("prefer_host", req.prefer_host)
    if len(req.exclude_host_ids) > MAX_EXCLUDED:
        raise InvalidRequest("exclude_host_ids", f"at most {MAX_EXCLUDED} ids")
    for i, h in enumerate(req.exclude_host_ids):
        _check_ident(f"exclude_host_ids[{i}]", h, required=True)
    _check_migration_fields(kind, req.source_host_id, req.skip_cpu_check, req.skip_kernel_check)
    return PlacementRequest(
        server_id=r.server_id,
        vcpu_count=r.vcpu_count,
        memory_mb=r.memory_mb,
        disks=tuple(disks),
        networks=tuple(dict.fromkeys(r.networks)),
        kind=kind,
        prefer_host=req.prefer_host,
        exclude_host_ids=frozenset(req.exclude_host_ids),
        reservation_ttl_seconds=float(ttl),
        source_host_id=req.source_host_id,
        skip_cpu_check=req.skip_cpu_check,
        skip_kernel_check=req.skip_kernel_check,
    )


def request_from_proto(req: scheduler_pb2.SelectHostRequest) -> PlacementRequest:
    """Validates a SelectHostRequest; InvalidRequest names the first bad field."""
    _check_range("reservation_ttl_seconds", req.reservation_ttl_seconds, 0, MAX_TTL_SECONDS)
    return _placement_request(req, req.reservation_ttl_seconds)


def forecast_from_proto(req: scheduler_pb2.ForecastRequest) -> PlacementRequest:
    """Validates a ForecastRequest, as SelectHostRequest."""
    return _placement_request(req, 0)


def reservation_id_from_proto(field: str, value: str) -> str:
    return _check_ident(field, value, required=True)


# ---- answers ----

#: Built answer messages by value: a forecast over 10,000 hosts mostly repeats the answers
#: of the previous one, and copying a built message is about twice as fast as building it
#: again. Each is cleared when it grows past _BUILT_MAX (scores and figures change).
_REJECTED: dict[RejectedHost, scheduler_pb2.RejectedHost] = {}
_CANDIDATES: dict[Candidate, scheduler_pb2.Candidate] = {}
_BUILT_MAX = 100_000


def _built(cache: dict, key, build):
    msg = cache.get(key)
    if msg is None:
        if len(cache) >= _BUILT_MAX:
            cache.clear()
        msg = cache[key] = build(key)
    return msg


def _candidate_msg(c: Candidate) -> scheduler_pb2.Candidate:
    return scheduler_pb2.Candidate(host_id=c.host_id, host_name=c.host_name, score=c.score,
                                   storage_ids=c.storage_ids)


def _rejected_msg(rh: RejectedHost) -> scheduler_pb2.RejectedHost:
    return scheduler_pb2.RejectedHost(
        host_id=rh.host_id, host_name=rh.host_name,
        rejections=[scheduler_pb2.Rejection(filter=x.filter, reason=x.reason, message=x.message)
                    for x in rh.rejections])


def result_to_proto(result: PlacementResult) -> scheduler_pb2.SelectHostResponse:
    resp = scheduler_pb2.SelectHostResponse()
    resp.candidates.extend([_built(_CANDIDATES, c, _candidate_msg) for c in result.candidates])
    resp.rejected.extend([_built(_REJECTED, rh, _rejected_msg) for rh in result.rejected])
    if result.selected is not None:
        resp.selected.CopyFrom(_candidate_msg(result.selected))
    if result.reservation is not None:
        rv = result.reservation
        resp.reservation.id = rv.id
        resp.reservation.host_id = rv.host_id
        secs = int(rv.expires_at)
        resp.reservation.expires_at.seconds = secs
        resp.reservation.expires_at.nanos = int((rv.expires_at - secs) * 1e9)
    return resp


def forecast_to_proto(result: PlacementResult) -> scheduler_pb2.ForecastResponse:
    """Every candidate and every rejected host (a message, so nothing is cut)."""
    resp = scheduler_pb2.ForecastResponse(can_place=bool(result.candidates),
                                          stale=result.stale_view)
    resp.candidates.extend([_built(_CANDIDATES, c, _candidate_msg) for c in result.candidates])
    resp.rejected.extend([_built(_REJECTED, rh, _rejected_msg) for rh in result.rejected])
    return resp
