"""A fake region HostService for the scheduler's gRPC tests: WatchHosts only.

The first message of each watch is a snapshot of `hosts`; `push()` sends a
change to every open watch. `stop()`/`start()` cut and restore the region.
"""

from __future__ import annotations

import asyncio

import grpc
from ferry_proto.region.v1 import host_service_pb2, host_service_pb2_grpc, resources_pb2


class FakeRegion(host_service_pb2_grpc.HostServiceServicer):
    def __init__(self, hosts: list[resources_pb2.Host]) -> None:
        self.hosts = {h.id: h for h in hosts}
        self._queues: set[asyncio.Queue] = set()
        self._server: grpc.aio.Server | None = None
        self.port = 0
        self.watches_opened = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def watchers(self) -> int:
        return len(self._queues)

    async def start(self) -> None:
        self._server = grpc.aio.server()
        host_service_pb2_grpc.add_HostServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port(f"127.0.0.1:{self.port}")
        assert self.port
        await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)
            self._server = None
        self._queues.clear()

    def push(self, hosts: list[resources_pb2.Host] = (), removed: list[str] = ()) -> None:
        for h in hosts:
            self.hosts[h.id] = h
        for hid in removed:
            self.hosts.pop(hid, None)
        msg = host_service_pb2.WatchHostsResponse(hosts=hosts, removed_host_ids=removed)
        for q in self._queues:
            q.put_nowait(msg)

    async def WatchHosts(self, request, context):
        q: asyncio.Queue = asyncio.Queue()
        self._queues.add(q)
        self.watches_opened += 1
        try:
            yield host_service_pb2.WatchHostsResponse(hosts=list(self.hosts.values()),
                                                      snapshot=True)
            while True:
                yield await q.get()
        finally:
            self._queues.discard(q)
