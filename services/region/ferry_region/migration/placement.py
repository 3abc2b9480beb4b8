"""What a migrating server needs from a target host, as a scheduler request.

Shared by cold migration, rescue, live migration and the forecast, so every
path asks the scheduler the same question: local disks need room on the
target (any storage), shared disks need their own storage to be reachable
there, the source host is never a candidate, and live migration adds the
CPU and kernel checks unless skipped.
"""

from __future__ import annotations

from ferry_proto.scheduler.v1 import scheduler_pb2

from ..db.models import Server
from ..states import StorageKind

KINDS = {
    "migrate": scheduler_pb2.PLACEMENT_KIND_MIGRATE,
    "live": scheduler_pb2.PLACEMENT_KIND_LIVE_MIGRATE,
    "rescue": scheduler_pb2.PLACEMENT_KIND_RESCUE,
}


def requirements(server: Server) -> scheduler_pb2.ServerRequirements:
    disks = []
    for d in sorted(server.disks, key=lambda d: d.index):
        shared = d.storage is not None and d.storage.kind == StorageKind.SHARED
        disks.append(scheduler_pb2.DiskRequirement(
            size_mb=d.size_mb, shared=shared, storage_id=(d.storage_id or "") if shared else ""))
    return scheduler_pb2.ServerRequirements(
        server_id=server.id, vcpu_count=server.vcpu_count, memory_mb=server.memory_mb,
        disks=disks, networks=[n.network for n in server.nics])


def select_request(server: Server, kind: str, *, prefer_host: str = "",
                   skip_cpu_check: bool = False, skip_kernel_check: bool = False,
                   reservation_ttl: int = 0) -> scheduler_pb2.SelectHostRequest:
    """A SelectHost request for moving `server` (loaded with disks, storages, nics) off its host."""
    source = server.host_id or ""
    return scheduler_pb2.SelectHostRequest(
        requirements=requirements(server), kind=KINDS[kind], prefer_host=prefer_host,
        exclude_host_ids=[source] if source else [], reservation_ttl_seconds=reservation_ttl,
        source_host_id=source, skip_cpu_check=skip_cpu_check, skip_kernel_check=skip_kernel_check)


def forecast_request(server: Server, kind: str, *, prefer_host: str = "",
                     skip_cpu_check: bool = False,
                     skip_kernel_check: bool = False) -> scheduler_pb2.ForecastRequest:
    """The same question as `select_request`, asked without reserving anything."""
    source = server.host_id or ""
    return scheduler_pb2.ForecastRequest(
        requirements=requirements(server), kind=KINDS[kind], prefer_host=prefer_host,
        exclude_host_ids=[source] if source else [], source_host_id=source,
        skip_cpu_check=skip_cpu_check, skip_kernel_check=skip_kernel_check)
