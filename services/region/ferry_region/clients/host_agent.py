"""Client of the host agents: one cached channel per agent address.

Every unary call carries a deadline; failures become domain errors through
`ferry_common.errors.from_rpc_error` (transport failures -> Unavailable naming
the agent), with the RpcError kept as `__cause__`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator

import grpc

from ferry_common.channels import open_channel
from ferry_common.errors import from_rpc_error
from ferry_common.tls import TlsConfig
from ferry_proto.host.v1 import agent_pb2, agent_pb2_grpc

log = logging.getLogger(__name__)


class AgentClients:
    """Host agent stubs keyed by access address."""

    def __init__(self, tls: TlsConfig | None = None, *, timeout: float = 15.0) -> None:
        self.tls = tls
        self.timeout = timeout
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, agent_pb2_grpc.HostAgentServiceStub] = {}

    def stub(self, address: str) -> agent_pb2_grpc.HostAgentServiceStub:
        stub = self._stubs.get(address)
        if stub is None:
            channel = open_channel(address, self.tls)
            self._channels[address] = channel
            stub = self._stubs[address] = agent_pb2_grpc.HostAgentServiceStub(channel)
        return stub

    async def _call(self, address: str, method: str, request, timeout: float | None):
        fn = getattr(self.stub(address), method)
        try:
            return await fn(request, timeout=timeout or self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, f"host agent {address}") from exc

    async def prepare_guest(self, address: str, spec: agent_pb2.GuestSpec, region_address: str,
                            *, timeout: float | None = None) -> agent_pb2.PrepareGuestResponse:
        return await self._call(address, "PrepareGuest",
                                agent_pb2.PrepareGuestRequest(spec=spec,
                                                              region_address=region_address),
                                timeout)

    async def start_guest(self, address: str, guest_id: str, *,
                          timeout: float | None = None) -> agent_pb2.StartGuestResponse:
        return await self._call(address, "StartGuest",
                                agent_pb2.StartGuestRequest(guest_id=guest_id), timeout)

    async def stop_guest(self, address: str, guest_id: str, *, force: bool = False,
                         stop_timeout: int = 10,
                         timeout: float | None = None) -> agent_pb2.StopGuestResponse:
        req = agent_pb2.StopGuestRequest(guest_id=guest_id, force=force,
                                         timeout_seconds=stop_timeout)
        # The agent may wait stop_timeout for a clean quit before killing.
        return await self._call(address, "StopGuest", req, timeout or self.timeout + stop_timeout)

    async def delete_guest(self, address: str, guest_id: str, *, delete_shared_disks: bool = True,
                           timeout: float | None = None) -> agent_pb2.DeleteGuestResponse:
        req = agent_pb2.DeleteGuestRequest(guest_id=guest_id,
                                           delete_shared_disks=delete_shared_disks)
        return await self._call(address, "DeleteGuest", req, timeout)

    async def get_guest(self, address: str, guest_id: str, *,
                        timeout: float | None = None) -> agent_pb2.GetGuestResponse:
        return await self._call(address, "GetGuest",
                                agent_pb2.GetGuestRequest(guest_id=guest_id), timeout)

    async def read_serial_log(self, address: str, guest_id: str, tail_lines: int, *,
                              timeout: float | None = None) -> agent_pb2.ReadSerialLogResponse:
        req = agent_pb2.ReadSerialLogRequest(guest_id=guest_id, tail_lines=tail_lines)
        return await self._call(address, "ReadSerialLog", req, timeout)

    async def watch_serial_log(self, address: str, guest_id: str,
                               offset: int) -> AsyncGenerator[agent_pb2.WatchSerialLogResponse, None]:
        """Follows a serial log; the agent call is cancelled when the caller stops iterating."""
        call = self.stub(address).WatchSerialLog(
            agent_pb2.WatchSerialLogRequest(guest_id=guest_id, offset=offset))
        try:
            async for msg in call:
                yield msg
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED and call.cancelled():
                return
            raise from_rpc_error(exc, f"host agent {address}") from exc
        finally:
            call.cancel()

    async def close(self) -> None:
        channels, self._channels, self._stubs = self._channels, {}, {}
        for channel in channels.values():
            await channel.close()
