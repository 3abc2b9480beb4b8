"""HostAgentService: proto in, domain call, proto out."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from ferry_common.errors import InvalidArgument
from ferry_common.validation import check_range
from ferry_proto.host.v1 import agent_pb2 as pb
from ferry_proto.host.v1 import agent_pb2_grpc as pb_grpc

from . import convert, serial
from .facts import HostFacts
from .guests import Guests

DEFAULT_TAIL = 100
MAX_TAIL = 10_000
DEFAULT_STOP_TIMEOUT = 10
MAX_STOP_TIMEOUT = 600


class HostAgentServicer(pb_grpc.HostAgentServiceServicer):
    def __init__(self, guests: Guests, facts: Callable[[], HostFacts]) -> None:
        self._guests = guests
        self._facts = facts

    async def GetHostFacts(self, request, context):
        return convert.host_facts(await asyncio.to_thread(self._facts))

    async def PrepareGuest(self, request, context):
        if not request.HasField("spec"):
            raise InvalidArgument("spec", "must be set")
        view = await self._guests.prepare(convert.guest_def(request.spec), request.region_address)
        return pb.PrepareGuestResponse(guest=convert.guest(view))

    async def StartGuest(self, request, context):
        view = await self._guests.start(request.guest_id)
        return pb.StartGuestResponse(guest=convert.guest(view))

    async def StopGuest(self, request, context):
        timeout = check_range("timeout_seconds", request.timeout_seconds, 0, MAX_STOP_TIMEOUT)
        view = await self._guests.stop(request.guest_id, force=request.force,
                                       timeout=float(timeout or DEFAULT_STOP_TIMEOUT))
        return pb.StopGuestResponse(guest=convert.guest(view))

    async def DeleteGuest(self, request, context):
        await self._guests.delete(request.guest_id,
                                  delete_shared_disks=request.delete_shared_disks)
        return pb.DeleteGuestResponse()

    async def GetGuest(self, request, context):
        return pb.GetGuestResponse(guest=convert.guest(await self._guests.get(request.guest_id)))

    async def ListGuests(self, request, context):
        views = await self._guests.views()
        return pb.ListGuestsResponse(guests=[convert.guest(v) for v in views])

    async def ReadSerialLog(self, request, context):
        count = check_range("tail_lines", request.tail_lines, 0, MAX_TAIL) or DEFAULT_TAIL
        path = self._guests.serial_log(request.guest_id)
        lines, offset = await asyncio.to_thread(serial.tail, path, count)
        return pb.ReadSerialLogResponse(lines=lines, next_offset=offset)

    async def WatchSerialLog(self, request, context):
        guest_id = request.guest_id
        path = self._guests.serial_log(guest_id)
        stream = serial.follow(path, request.offset, alive=lambda: self._guests.exists(guest_id))
        try:
            async for lines, offset in stream:
                yield pb.WatchSerialLogResponse(lines=lines, next_offset=offset)
        finally:
            await stream.aclose()  # closes the log file when the client goes away
