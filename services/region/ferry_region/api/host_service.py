"""HostService and HostRegistryService servicers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from ferry_proto.region.v1 import host_service_pb2 as pb
from ferry_proto.region.v1 import host_service_pb2_grpc
from ferry_proto.region.v1 import registry_service_pb2 as rpb
from ferry_proto.region.v1 import registry_service_pb2_grpc

from ..db.queries import find_host
from ..domain.hosts import HostRegistry, Registration, StorageReport
from ..hostdown_states import OPEN_STATES, IncidentState
from ..hostdown_store import HostDownStore
from . import convert

_INCIDENT_STATES = {s: getattr(pb, f"HOST_DOWN_INCIDENT_STATE_{s.name}") for s in IncidentState}


class HostServicer(host_service_pb2_grpc.HostServiceServicer):
    def __init__(self, hosts: HostRegistry, *, poll: float = 30.0) -> None:
        self.hosts = hosts
        self.poll = poll

    async def ListHosts(self, request: pb.ListHostsRequest,
                        context: grpc.aio.ServicerContext) -> pb.ListHostsResponse:
        views = await self.hosts.list_hosts(request.hypervisor, request.search)
        return pb.ListHostsResponse(hosts=[convert.host(v) for v in views])

    async def GetHost(self, request: pb.GetHostRequest,
                      context: grpc.aio.ServicerContext) -> pb.GetHostResponse:
        return pb.GetHostResponse(host=convert.host(await self.hosts.get(request.id)))

    async def WatchHosts(self, request: pb.WatchHostsRequest,
                         context: grpc.aio.ServicerContext
                         ) -> AsyncIterator[pb.WatchHostsResponse]:
        # Subscribe before the snapshot so no change between the two is lost.
        async with self.hosts.events.subscribe() as sub:
            views = await self.hosts.list_hosts()
            yield pb.WatchHostsResponse(hosts=[convert.host(v) for v in views], snapshot=True)
            while True:
                changed = await sub.next(timeout=self.poll)
                if not changed:
                    continue
                views, removed = await self.hosts.views(changed)
                yield pb.WatchHostsResponse(hosts=[convert.host(v) for v in views],
                                            removed_host_ids=removed)


    async def SetHostAutoMigrate(self, request: pb.SetHostAutoMigrateRequest,
                                 context: grpc.aio.ServicerContext
                                 ) -> pb.SetHostAutoMigrateResponse:
        down = (request.auto_migrate_on_host_down
                if request.HasField("auto_migrate_on_host_down") else None)
        shutdown = (request.auto_migrate_on_host_shutdown
                    if request.HasField("auto_migrate_on_host_shutdown") else None)
        view = await self.hosts.set_auto_migrate(request.id, down, shutdown)
        return pb.SetHostAutoMigrateResponse(host=convert.host(view))

    async def ListHostDownIncidents(self, request: pb.ListHostDownIncidentsRequest,
                                    context: grpc.aio.ServicerContext
                                    ) -> pb.ListHostDownIncidentsResponse:
        host_id = None
        if request.host:
            host_id = await self.hosts.db.read(
                lambda s: find_host(s, request.host, full=False).id)
        rows = await HostDownStore(self.hosts.db).incidents(host_id)
        out = pb.ListHostDownIncidentsResponse()
        for r in rows:
            if request.open_only and r.state not in OPEN_STATES:
                continue
            inc = out.incidents.add(id=r.id, host_id=r.host_id, state=_INCIDENT_STATES[r.state],
                                    kind=r.kind, reason=r.reason)
            inc.detected_at.CopyFrom(convert.ts(r.detected_at))
            inc.updated_at.CopyFrom(convert.ts(r.updated_at))
            for sid, res in sorted((r.results or {}).items()):
                inc.servers.add(server_id=sid, action=str(res.get("action", "")),
                                task_id=str(res.get("task_id", "")),
                                outcome=str(res.get("outcome", "")))
        return out

    async def SetHostEnabled(self, request: pb.SetHostEnabledRequest,
                             context: grpc.aio.ServicerContext) -> pb.SetHostEnabledResponse:
        view = await self.hosts.set_enabled(request.id, request.enabled)
        return pb.SetHostEnabledResponse(host=convert.host(view))


class HostRegistryServicer(registry_service_pb2_grpc.HostRegistryServiceServicer):
    def __init__(self, hosts: HostRegistry) -> None:
        self.hosts = hosts

    async def RegisterHost(self, request: rpb.RegisterHostRequest,
                           context: grpc.aio.ServicerContext) -> rpb.RegisterHostResponse:
        reg = Registration(
            host_id=request.host_id, name=request.name, access_address=request.access_address,
            cpu_model=request.cpu_model, cpu_microcode=request.cpu_microcode,
            kernel_version=request.kernel_version, accelerator=request.accelerator,
            cpu_count=request.cpu_count, mem_size_mb=request.mem_size_mb,
            storages=[StorageReport(s.storage_id, s.name, s.kind, s.path, s.capacity_mb,
                                    s.free_mb) for s in request.storages],
            wire=request.wire, networks=list(request.networks),
            guest_ids=[g.server_id for g in request.guests],
            agent_version=request.agent_version)
        view, placed = await self.hosts.register(reg)
        return rpb.RegisterHostResponse(
            host=convert.host(view),
            assignments=[rpb.ServerAssignment(server_id=sid, placed_here=here)
                         for sid, here in placed.items()],
            refresh_interval_seconds=self.hosts.refresh_interval)
