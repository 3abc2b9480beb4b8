"""Builders shared by the scheduler tests (unique module name: tests share sys.path)."""

from __future__ import annotations

from ferry_proto.region.v1 import resources_pb2
from ferry_proto.scheduler.v1 import scheduler_pb2
from ferry_scheduler.cache import HostCache
from ferry_scheduler.clock import ManualClock
from ferry_scheduler.convert import host_from_proto
from ferry_scheduler.model import DiskRequest, HostView, PlacementKind, PlacementRequest
from ferry_scheduler.placement import Placer
from ferry_scheduler.reservations import ReservationBook


def host_proto(host_id: str, name: str | None = None, *, cpu_count: int = 8, cpu_used: int = 0,
               cpu_cmtbound: float = 1.0, mem_size_mb: int = 8192, mem_used_mb: int = 0,
               mem_cmtbound: float = 1.0, mem_reserved_mb: int = 0, enabled: bool = True,
               status: int = resources_pb2.HOST_STATUS_RUNNING,
               host_status: int = resources_pb2.HOST_HEALTH_ONLINE,
               local_free_mb: int | None = 100_000, shared: dict[str, int] | None = None,
               wire: str = "wire0", networks: tuple[str, ...] = ("net0",),
               cpu_model: str = "Intel Xeon", cpu_microcode: str = "0x1",
               kernel_version: str = "6.1.0", server_count: int = 0) -> resources_pb2.Host:
    storages = []
    if local_free_mb is not None:
        storages.append(resources_pb2.HostStorage(
            storage_id=f"{host_id}-local", name="local", kind=resources_pb2.STORAGE_KIND_LOCAL,
            path=f"/var/{host_id}", capacity_mb=max(local_free_mb, 200_000), free_mb=local_free_mb))
    for sid, free in (shared or {}).items():
        storages.append(resources_pb2.HostStorage(
            storage_id=sid, name=sid, kind=resources_pb2.STORAGE_KIND_SHARED, path=f"/mnt/{sid}",
            capacity_mb=max(free, 500_000), free_mb=free))
    return resources_pb2.Host(
        id=host_id, name=name or host_id, access_address="127.0.0.11:7720", status=status,
        host_status=host_status, enabled=enabled, hypervisor="kvm", cpu_model=cpu_model,
        cpu_microcode=cpu_microcode, kernel_version=kernel_version,
        accelerator=resources_pb2.ACCELERATOR_TCG, cpu_count=cpu_count, cpu_used=cpu_used,
        cpu_cmtbound=cpu_cmtbound, mem_size_mb=mem_size_mb, mem_used_mb=mem_used_mb,
        mem_cmtbound=mem_cmtbound, mem_reserved_mb=mem_reserved_mb, storages=storages, wire=wire,
        networks=list(networks), server_count=server_count)


def host(host_id: str, name: str | None = None, **kw) -> HostView:
    return host_from_proto(host_proto(host_id, name, **kw))


def request(vcpu: int = 1, memory_mb: int = 1024, *, server_id: str = "srv-1",
            disks: tuple[DiskRequest, ...] = (), networks: tuple[str, ...] = (),
            kind: PlacementKind = PlacementKind.CREATE, prefer_host: str = "",
            exclude: frozenset[str] = frozenset(), ttl: float = 0.0,
            **kw) -> PlacementRequest:
    return PlacementRequest(server_id=server_id, vcpu_count=vcpu, memory_mb=memory_mb,
                            disks=disks, networks=networks, kind=kind, prefer_host=prefer_host,
                            exclude_host_ids=exclude, reservation_ttl_seconds=ttl, **kw)


def select_request(vcpu: int = 1, memory_mb: int = 1024, *, server_id: str = "srv-1",
                   disks: list[scheduler_pb2.DiskRequirement] | None = None,
                   networks: list[str] | None = None, prefer_host: str = "",
                   kind: int = scheduler_pb2.PLACEMENT_KIND_CREATE,
                   ttl: int = 0) -> scheduler_pb2.SelectHostRequest:
    return scheduler_pb2.SelectHostRequest(
        requirements=scheduler_pb2.ServerRequirements(
            server_id=server_id, vcpu_count=vcpu, memory_mb=memory_mb, disks=disks or [],
            networks=networks or []),
        kind=kind, prefer_host=prefer_host, reservation_ttl_seconds=ttl)


class World:
    """A cache + reservation book + placer on a manual clock."""

    def __init__(self, *hosts: HostView, grace: float = 120.0, fast: bool = True) -> None:
        self.clock = ManualClock()
        self.cache = HostCache(self.clock)
        self.book = ReservationBook(self.clock, confirmed_grace=grace)
        self.cache.add_listener(self.book)
        self.placer = Placer(self.cache, self.book, clock=self.clock, fast=fast)
        self.cache.apply_snapshot(hosts)


async def eventually(predicate, timeout: float = 5.0, interval: float = 0.02, what: str = ""):
    """Polls `predicate()` until truthy or the deadline passes (then AssertionError)."""
    import asyncio
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"not true within {timeout}s: {what or predicate}")
        await asyncio.sleep(interval)
