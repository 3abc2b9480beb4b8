"""In-test fakes of the region's peers, served over real gRPC on ephemeral ports.

The real scheduler and host agent are built elsewhere; these stand in for them in
the region's unit tests: a SchedulerService that places on the hosts it is told
about (or answers RESOURCE_EXHAUSTED with per-host rejections), and a
HostAgentService whose calls can be gated, failed or slowed on purpose.
"""

from __future__ import annotations

import asyncio
import collections
import uuid
from dataclasses import dataclass, field

import grpc

from ferry_common.errors import FerryError, NotFound, ResourceExhausted
from ferry_common.server import ServiceServer
from ferry_proto.host.v1 import agent_pb2, agent_pb2_grpc
from ferry_proto.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc


class FakeScheduler(scheduler_pb2_grpc.SchedulerServiceServicer):
    def __init__(self) -> None:
        self.hosts: list[tuple[str, str]] = []  # (id, name), first is chosen
        self.reject: list[scheduler_pb2.RejectedHost] | None = None
        self.selects: list[scheduler_pb2.SelectHostRequest] = []
        self.metadata: list[dict] = []
        self.confirmed: list[str] = []
        self.released: list[str] = []

    async def SelectHost(self, request, context):
        self.selects.append(request)
        self.metadata.append(dict(context.invocation_metadata()))
        if self.reject is not None or not self.hosts:
            err = ResourceExhausted("no host can take the server")
            err.details = list(self.reject or [])
            raise err
        hosts = self.hosts
        if request.prefer_host:
            hosts = [h for h in hosts if request.prefer_host in h]
        host_id, name = hosts[0]
        rid = str(uuid.uuid4())
        return scheduler_pb2.SelectHostResponse(
            selected=scheduler_pb2.Candidate(host_id=host_id, host_name=name, score=1.0),
            reservation=scheduler_pb2.Reservation(id=rid, host_id=host_id))

    async def ConfirmReservation(self, request, context):
        self.confirmed.append(request.id)
        return scheduler_pb2.ConfirmReservationResponse()

    async def ReleaseReservation(self, request, context):
        self.released.append(request.id)
        return scheduler_pb2.ReleaseReservationResponse()


@dataclass
class FakeGuest:
    spec: agent_pb2.GuestSpec
    state: int = agent_pb2.GUEST_STATE_STOPPED


@dataclass
class Behaviour:
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    fail: dict[str, FerryError] = field(default_factory=dict)


class FakeAgent(agent_pb2_grpc.HostAgentServiceServicer):
    def __init__(self, host_id: str) -> None:
        self.host_id = host_id
        self.guests: dict[str, FakeGuest] = {}
        self.calls: list[tuple[str, str]] = []
        self.counts: collections.Counter[str] = collections.Counter()
        self.entered: collections.defaultdict[str, asyncio.Event] = \
            collections.defaultdict(asyncio.Event)
        self.behaviour = Behaviour()
        self.serial: list[str] = [f"line {i}" for i in range(1, 6)]
        self.serial_new: asyncio.Queue[list[str]] = asyncio.Queue()
        self.watch_ended = asyncio.Event()
        self.watch_started = asyncio.Event()

    def gate(self, method: str) -> asyncio.Event:
        ev = asyncio.Event()
        self.behaviour.gates[method] = ev
        return ev

    async def _hook(self, method: str, guest_id: str) -> None:
        self.calls.append((method, guest_id))
        self.counts[method] += 1
        self.entered[method].set()
        gate = self.behaviour.gates.get(method)
        if gate is not None:
            await gate.wait()
        err = self.behaviour.fail.get(method)
        if err is not None:
            raise err

    def _guest(self, gid: str) -> agent_pb2.Guest:
        g = self.guests.get(gid)
        if g is None:
            raise NotFound("guest", gid)
        disks = [agent_pb2.DiskInfo(disk_id=d.disk_id, storage_id=d.storage_id,
                                    path=f"/fake/{d.storage_id}/disks/{d.disk_id}.qcow2",
                                    size_mb=d.size_mb) for d in g.spec.disks]
        return agent_pb2.Guest(guest_id=gid, state=g.state, disks=disks,
                               pid=4242 if g.state == agent_pb2.GUEST_STATE_RUNNING else 0)

    async def PrepareGuest(self, request, context):
        await self._hook("PrepareGuest", request.spec.guest_id)
        self.guests.setdefault(request.spec.guest_id, FakeGuest(request.spec))
        self.last_region_address = request.region_address
        return agent_pb2.PrepareGuestResponse(guest=self._guest(request.spec.guest_id))

    async def StartGuest(self, request, context):
        await self._hook("StartGuest", request.guest_id)
        self._guest(request.guest_id)
        self.guests[request.guest_id].state = agent_pb2.GUEST_STATE_RUNNING
        return agent_pb2.StartGuestResponse(guest=self._guest(request.guest_id))

    async def StopGuest(self, request, context):
        await self._hook("StopGuest", request.guest_id)
        self._guest(request.guest_id)
        self.guests[request.guest_id].state = agent_pb2.GUEST_STATE_STOPPED
        return agent_pb2.StopGuestResponse(guest=self._guest(request.guest_id))

    async def DeleteGuest(self, request, context):
        await self._hook("DeleteGuest", request.guest_id)
        self.guests.pop(request.guest_id, None)
        return agent_pb2.DeleteGuestResponse()

    async def GetGuest(self, request, context):
        return agent_pb2.GetGuestResponse(guest=self._guest(request.guest_id))

    async def ListGuests(self, request, context):
        return agent_pb2.ListGuestsResponse(guests=[self._guest(g) for g in self.guests])

    async def ReadSerialLog(self, request, context):
        await self._hook("ReadSerialLog", request.guest_id)
        self._guest(request.guest_id)
        n = request.tail_lines or 100
        return agent_pb2.ReadSerialLogResponse(lines=self.serial[-n:],
                                               next_offset=sum(len(x) + 1 for x in self.serial))

    async def WatchSerialLog(self, request, context):
        self.calls.append(("WatchSerialLog", request.guest_id))
        self._guest(request.guest_id)
        self.watch_started.set()
        try:
            while True:
                lines = await self.serial_new.get()
                yield agent_pb2.WatchSerialLogResponse(lines=lines)
        finally:
            self.watch_ended.set()


class Served:
    """A fake servicer running on a real grpc.aio server."""

    def __init__(self, server: ServiceServer, servicer) -> None:
        self.server = server
        self.servicer = servicer

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    async def stop(self) -> None:
        await self.server.stop(0)


async def serve_scheduler(bind: str = "127.0.0.1:0") -> Served:
    fake = FakeScheduler()
    srv = ServiceServer("fake-scheduler", bind)
    srv.add(scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server, fake)
    await srv.start()
    return Served(srv, fake)


async def serve_agent(host_id: str, bind: str = "127.0.0.1:0") -> Served:
    fake = FakeAgent(host_id)
    srv = ServiceServer(f"fake-agent-{host_id}", bind)
    srv.add(agent_pb2_grpc.add_HostAgentServiceServicer_to_server, fake)
    await srv.start()
    return Served(srv, fake)


def rpc_error_field(exc: grpc.aio.AioRpcError) -> tuple[grpc.StatusCode, dict]:
    from ferry_common.errors import error_info
    info = error_info(exc)
    return exc.code(), dict(info.metadata) if info else {}
