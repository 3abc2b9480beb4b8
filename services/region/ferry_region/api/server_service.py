"""ServerService servicer."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from ferry_common.validation import check_enum
from ferry_proto.region.v1 import resources_pb2, server_service_pb2 as pb
from ferry_proto.region.v1 import server_service_pb2_grpc

from ..domain.servers import CreateServerSpec, DiskRequest, ListServersQuery, ServerManager
from ..states import ServerStatus, from_proto
from . import convert


class ServerServicer(server_service_pb2_grpc.ServerServiceServicer):
    def __init__(self, servers: ServerManager) -> None:
        self.servers = servers

    async def CreateServer(self, request: pb.CreateServerRequest,
                           context: grpc.aio.ServicerContext) -> pb.CreateServerResponse:
        spec = CreateServerSpec(
            name=request.name, image=request.image, vcpu_count=request.vcpu_count,
            memory_mb=request.memory_mb,
            system_disk=DiskRequest(request.system_disk.size_mb, request.system_disk.storage),
            data_disks=[DiskRequest(d.size_mb, d.storage) for d in request.data_disks],
            networks=list(request.networks), prefer_host=request.prefer_host,
            auto_start=request.auto_start, project=request.project)
        server, task_id = await self.servers.create(spec)
        return pb.CreateServerResponse(server=convert.server_record(server), task_id=task_id)

    async def StartServer(self, request: pb.StartServerRequest,
                          context: grpc.aio.ServicerContext) -> pb.StartServerResponse:
        server, task_id = await self.servers.start(request.id)
        return pb.StartServerResponse(server=convert.server_record(server), task_id=task_id)

    async def StopServer(self, request: pb.StopServerRequest,
                         context: grpc.aio.ServicerContext) -> pb.StopServerResponse:
        server, task_id = await self.servers.stop(request.id, request.force)
        return pb.StopServerResponse(server=convert.server_record(server), task_id=task_id)

    async def DeleteServer(self, request: pb.DeleteServerRequest,
                           context: grpc.aio.ServicerContext) -> pb.DeleteServerResponse:
        server, task_id = await self.servers.delete(request.id)
        return pb.DeleteServerResponse(server=convert.server_record(server), task_id=task_id)

    async def GetServer(self, request: pb.GetServerRequest,
                        context: grpc.aio.ServicerContext) -> pb.GetServerResponse:
        return pb.GetServerResponse(server=convert.server_record(await self.servers.get(request.id)))

    async def ListServers(self, request: pb.ListServersRequest,
                          context: grpc.aio.ServicerContext) -> pb.ListServersResponse:
        check_enum("scope", request.scope, pb.ListScope, allow_unspecified=True)
        check_enum("status", request.status, resources_pb2.ServerStatus, allow_unspecified=True)
        page = await self.servers.list_page(ListServersQuery(
            search=request.search, details=request.details,
            system_scope=request.scope == pb.LIST_SCOPE_SYSTEM, project=request.project,
            host=request.host, status=from_proto(ServerStatus, request.status),
            page_size=request.page_size, page_token=request.page_token))
        return pb.ListServersResponse(
            servers=[convert.server_record(s, details=request.details) for s in page.servers],
            next_page_token=page.next_page_token, total_size=page.total_size)

    async def GetServerSerialLog(self, request: pb.GetServerSerialLogRequest,
                                 context: grpc.aio.ServicerContext
                                 ) -> pb.GetServerSerialLogResponse:
        lines, offset = await self.servers.serial_log(request.id, request.tail_lines)
        return pb.GetServerSerialLogResponse(lines=lines, next_offset=offset)

    async def WatchServerSerialLog(self, request: pb.WatchServerSerialLogRequest,
                                   context: grpc.aio.ServicerContext
                                   ) -> AsyncIterator[pb.WatchServerSerialLogResponse]:
        stream = self.servers.watch_serial_log(request.id, request.tail_lines)
        async with contextlib.aclosing(stream):  # the agent call ends when the client goes
            async for lines, host_id in stream:
                yield pb.WatchServerSerialLogResponse(lines=lines, host_id=host_id)
