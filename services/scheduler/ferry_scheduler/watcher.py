"""The link to the region's HostService.WatchHosts stream.

One background task: connect, apply the first message as a snapshot and every
later one as a change, and when the stream breaks mark the cache stale and
reconnect with exponential backoff (with jitter) until stopped. The link is an
Enum state with a declarative transition table (ferry_common.states).

Failures are surfaced, not swallowed: each is logged, kept in `last_error`
and written into the cache's stale reason, which placements report; if the
task itself ever dies, `failure` holds the exception and the view stays stale.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random

import grpc
from ferry_common.channels import open_channel
from ferry_common.states import StateMachine
from ferry_common.tls import TlsConfig
from ferry_proto.region.v1 import host_service_pb2, host_service_pb2_grpc

from .cache import HostCache
from .convert import host_from_proto

log = logging.getLogger(__name__)


class LinkState(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"    # call placed, snapshot not applied yet
    SYNCED = "synced"            # snapshot applied, changes flowing
    BACKOFF = "backoff"          # stream broke; waiting before the next attempt
    STOPPED = "stopped"


LINK_TRANSITIONS = {
    LinkState.IDLE: {LinkState.CONNECTING, LinkState.STOPPED},
    LinkState.CONNECTING: {LinkState.SYNCED, LinkState.BACKOFF, LinkState.STOPPED},
    LinkState.SYNCED: {LinkState.BACKOFF, LinkState.STOPPED},
    LinkState.BACKOFF: {LinkState.CONNECTING, LinkState.STOPPED},
    LinkState.STOPPED: set(),
}


class RegionWatcher:
    def __init__(self, address: str, cache: HostCache, *, tls: TlsConfig | None = None,
                 backoff_min: float = 0.2, backoff_max: float = 5.0) -> None:
        self.address = address
        self.cache = cache
        self._tls = tls
        self._backoff_min = backoff_min
        self._backoff_max = backoff_max
        self.link: StateMachine[LinkState] = StateMachine("region-watch", LinkState.IDLE,
                                                          LINK_TRANSITIONS)
        self._channel: grpc.aio.Channel | None = None
        self._task: asyncio.Task[None] | None = None
        self.last_error: BaseException | None = None
        self.failure: BaseException | None = None
        self.attempts = 0

    def start(self) -> None:
        self.link.require("start", LinkState.IDLE)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="region-watch")
        self._task.add_done_callback(self._on_done)

    async def stop(self) -> None:
        """Stops the stream and closes the channel; idempotent."""
        if self.link.state is not LinkState.STOPPED:
            self.link.transition(LinkState.STOPPED)
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self._close_channel()

    async def _close_channel(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()

    async def _run(self) -> None:
        delay = self._backoff_min
        last_reason = ""
        while True:
            self.link.transition(LinkState.CONNECTING)
            self.attempts += 1
            # a fresh channel per attempt: our backoff, not gRPC's (which grows to 120 s)
            await self._close_channel()
            self._channel = open_channel(self.address, self._tls)
            stub = host_service_pb2_grpc.HostServiceStub(self._channel)
            try:
                call = stub.WatchHosts(host_service_pb2.WatchHostsRequest())
                async for msg in call:
                    if msg.snapshot:
                        self.cache.apply_snapshot(host_from_proto(h) for h in msg.hosts)
                        if self.link.state is LinkState.CONNECTING:
                            self.link.transition(LinkState.SYNCED)
                            log.info("watching hosts on region %s: %d host(s)",
                                     self.address, len(self.cache))
                        delay = self._backoff_min
                        last_reason = ""
                    else:
                        if self.link.state is not LinkState.SYNCED:
                            log.warning("region %s sent a change before its snapshot; applying it",
                                        self.address)
                        self.cache.apply_changes((host_from_proto(h) for h in msg.hosts),
                                                 msg.removed_host_ids)
                reason = f"region {self.address} ended the host watch"
                self.last_error = None
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as e:
                self.last_error = e
                reason = f"region {self.address} unreachable: {e.code().name}: {e.details()}"
            except Exception as e:
                self.last_error = e
                log.exception("host watch on region %s failed", self.address)
                reason = f"host watch failed: {type(e).__name__}: {e}"
            self.cache.mark_stale(reason)
            self.link.transition(LinkState.BACKOFF)
            wait = delay * random.uniform(0.8, 1.2)
            # say it once per distinct reason; the repeats of an outage go to DEBUG
            level = logging.DEBUG if reason == last_reason else logging.WARNING
            log.log(level, "%s; reconnecting in %.1fs", reason, wait)
            last_reason = reason
            await asyncio.sleep(wait)
            delay = min(delay * 2, self._backoff_max)

    def _on_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.failure = exc
            log.error("host watch task died; the host view stays stale", exc_info=exc)
            self.cache.mark_stale(f"host watch task died: {type(exc).__name__}: {exc}")
