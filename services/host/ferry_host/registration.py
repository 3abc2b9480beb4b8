"""Registration with the region: RegisterHost at start and every refresh interval.

The request (facts + the guests this agent runs) is built fresh for every
call. While the region is unreachable the agent retries with backoff (0.5 s
doubling to 10 s) on a fresh channel, so a long outage is not stretched by
gRPC's own reconnect backoff. The link is an explicit state machine.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable

import grpc

from ferry_common.channels import open_channel
from ferry_common.errors import from_rpc_error
from ferry_common.states import StateMachine
from ferry_common.tls import TlsConfig
from ferry_proto.region.v1 import registry_service_pb2 as reg_pb2
from ferry_proto.region.v1 import registry_service_pb2_grpc as reg_grpc

log = logging.getLogger(__name__)

CALL_TIMEOUT = 10.0
MIN_BACKOFF = 0.5
MAX_BACKOFF = 10.0


class RegistrationState(enum.Enum):
    IDLE = "idle"
    REGISTERING = "registering"  # a RegisterHost call is in flight
    REGISTERED = "registered"    # the last call succeeded; waiting for the next refresh
    RETRYING = "retrying"        # the last call failed; waiting for the backoff
    STOPPED = "stopped"


TRANSITIONS = {
    RegistrationState.IDLE: {RegistrationState.REGISTERING, RegistrationState.STOPPED},
    RegistrationState.REGISTERING: {RegistrationState.REGISTERED, RegistrationState.RETRYING,
                                    RegistrationState.STOPPED},
    RegistrationState.REGISTERED: {RegistrationState.REGISTERING, RegistrationState.STOPPED},
    RegistrationState.RETRYING: {RegistrationState.REGISTERING, RegistrationState.STOPPED},
    RegistrationState.STOPPED: set(),
}


class Registrar:
    def __init__(self, region: str, build_request: Callable[[], Awaitable[reg_pb2.RegisterHostRequest]],
                 *, peer_tls: TlsConfig | None = None, default_interval: float = 30.0) -> None:
        self.region = region
        self._build = build_request
        self._peer_tls = peer_tls
        self._default_interval = default_interval
        self._sm: StateMachine[RegistrationState] = StateMachine(
            f"registration with {region}", RegistrationState.IDLE, TRANSITIONS)
        self._channel: grpc.aio.Channel | None = None
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._registered = asyncio.Event()
        #: Called with the ids of guests the region places elsewhere (leftover removal).
        self.on_foreign: Callable[[list[str]], None] | None = None
        self.registrations = 0
        self.last_error: BaseException | None = None
        self.last_response: reg_pb2.RegisterHostResponse | None = None
        # Guests this host reported that the region says belong elsewhere.
        self.foreign_guests: set[str] = set()
        self._last_why = ""

    @property
    def state(self) -> RegistrationState:
        return self._sm.state

    def start(self) -> None:
        self._sm.require("start", RegistrationState.IDLE)
        self._task = asyncio.create_task(self._run(), name=f"register with {self.region}")

    def refresh_now(self) -> None:
        """Registers again without waiting for the interval (e.g. after a guest changed)."""
        self._wake.set()

    async def wait_registered(self, timeout: float) -> None:
        await asyncio.wait_for(self._registered.wait(), timeout)

    def _transition(self, new: RegistrationState, why: str = "") -> None:
        old = self._sm.state
        self._sm.transition(new)
        if new is RegistrationState.RETRYING:
            # Loud once per outage (or when the cause changes), quiet while retrying.
            level = logging.WARNING if why != self._last_why else logging.DEBUG
            self._last_why = why
        else:
            level = logging.DEBUG
            if new is RegistrationState.REGISTERED and self._last_why:
                level, self._last_why = logging.INFO, ""
        log.log(level, "registration with %s: %s -> %s%s", self.region, old.name, new.name,
                f" ({why})" if why else "")

    async def _drop_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()

    async def register_once(self) -> reg_pb2.RegisterHostResponse:
        request = await self._build()
        if self._channel is None:
            self._channel = open_channel(self.region, self._peer_tls)
        stub = reg_grpc.HostRegistryServiceStub(self._channel)
        try:
            return await stub.RegisterHost(request, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, f"region {self.region}") from exc

    async def _run(self) -> None:
        backoff = MIN_BACKOFF
        while True:
            self._transition(RegistrationState.REGISTERING)
            try:
                response = await self.register_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - kept in last_error, logged, retried
                self.last_error = exc
                self._transition(RegistrationState.RETRYING, f"{type(exc).__name__}: {exc}")
                await self._drop_channel()
                wait, backoff = backoff, min(backoff * 2, MAX_BACKOFF)
            else:
                self._accept(response)
                backoff = MIN_BACKOFF
                wait = float(response.refresh_interval_seconds or self._default_interval)
                self._transition(RegistrationState.REGISTERED, f"next in {wait:.0f}s")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), max(wait, 0.1))
            except TimeoutError:
                pass

    def _accept(self, response: reg_pb2.RegisterHostResponse) -> None:
        self.registrations += 1
        self.last_error = None
        self.last_response = response
        foreign = {a.server_id for a in response.assignments if not a.placed_here}
        for server_id in sorted(foreign - self.foreign_guests):
            log.warning("region says guest %s here is not placed on this host", server_id)
        self.foreign_guests = foreign
        if foreign and self.on_foreign is not None:
            self.on_foreign(sorted(foreign))
        self._registered.set()

    async def stop(self) -> None:
        """Stops re-registering. Idempotent."""
        if self._sm.state is RegistrationState.STOPPED:
            return
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self._drop_channel()
        self._transition(RegistrationState.STOPPED)
