"""Host health from etcd: watches `/onecloud/kvm/host/health/<host_id>`.

A put marks the host online, a delete (or lease expiry) offline. On every
(re)connection the current keys are read first and the watch continues from
that revision, so no event is missed. When etcd goes away the link goes back
to DISCONNECTED and reconnects with backoff; hosts are NOT marked offline
because the watch broke (etcd down is not every host down). Host-down rescue
is a later concern: only the status changes here.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable, Iterable

import aetcd
from ferry_common.states import StateMachine

from .states import HostHealth

log = logging.getLogger(__name__)

PREFIX = b"/onecloud/kvm/host/health/"


class LinkState(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    SYNCED = "synced"
    DISCONNECTED = "disconnected"
    STOPPED = "stopped"


LINK_TRANSITIONS = {
    LinkState.IDLE: {LinkState.CONNECTING, LinkState.STOPPED},
    LinkState.CONNECTING: {LinkState.SYNCED, LinkState.DISCONNECTED, LinkState.STOPPED},
    LinkState.SYNCED: {LinkState.DISCONNECTED, LinkState.STOPPED},
    LinkState.DISCONNECTED: {LinkState.CONNECTING, LinkState.STOPPED},
    LinkState.STOPPED: set(),
}

SetHealth = Callable[[str, HostHealth], Awaitable[object]]
SyncHealth = Callable[[Iterable[str]], Awaitable[object]]


def _split(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return (host or "127.0.0.1").strip("[]"), int(port or 2379)


class HealthWatcher:
    def __init__(self, endpoint: str, *, set_health: SetHealth, sync_health: SyncHealth,
                 backoff_initial: float = 0.2, backoff_max: float = 5.0,
                 call_timeout: int = 5) -> None:
        self.endpoint = endpoint
        self.host, self.port = _split(endpoint)
        self._set_health = set_health
        self._sync_health = sync_health
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.call_timeout = call_timeout
        self.link = StateMachine("etcd-health-watch", LinkState.IDLE, LINK_TRANSITIONS)
        self.online: set[str] = set()
        self.syncs = 0
        self.last_error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._client: aetcd.Client | None = None
        #: Host-down hooks (ferry_region.hostdown): the snapshot of each (re)sync as
        #: {host_id: create_revision} with its revision, then each event as
        #: (kind, host_id, create_revision, revision, value). Awaited in order.
        self.on_snapshot: Callable[[dict[str, int], int], Awaitable[object]] | None = None
        self.on_event: Callable[[str, str, int, int, bytes], Awaitable[object]] | None = None

    # --- the view the registry asks ---

    def health_of(self, host_id: str) -> HostHealth | None:
        """ONLINE/OFFLINE as etcd says now; None while etcd's view is unknown."""
        if self.link.state != LinkState.SYNCED:
            return None
        return HostHealth.ONLINE if host_id in self.online else HostHealth.OFFLINE

    # --- lifecycle ---

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="etcd-health-watch")

    async def wait_synced(self, timeout: float) -> None:
        await asyncio.wait_for(self.link.wait_for(LinkState.SYNCED), timeout)

    async def stop(self) -> None:
        """Stops watching and closes the client. Idempotent."""
        if self.link.state == LinkState.STOPPED:
            return
        self.link.transition(LinkState.STOPPED)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        await self._close_client()

    # --- the loop ---

    async def _loop(self) -> None:
        delay = self.backoff_initial
        while self.link.state != LinkState.STOPPED:
            self.link.transition(LinkState.CONNECTING)
            try:
                await self._sync_and_watch()
                log.warning("etcd watch on %s ended; reconnecting", self.endpoint)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - etcd unreachable or watch broken
                self.last_error = exc
                log.warning("etcd watch on %s broke: %s: %s; retrying in %.1fs", self.endpoint,
                            type(exc).__name__, exc, delay)
            finally:
                await self._close_client()
            if self.link.state == LinkState.STOPPED:
                return
            if self.link.state == LinkState.SYNCED:
                delay = self.backoff_initial  # it worked for a while: start over
            self.link.transition(LinkState.DISCONNECTED)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max)

    async def _sync_and_watch(self) -> None:
        client = aetcd.Client(host=self.host, port=self.port, timeout=self.call_timeout,
                              options={"grpc.keepalive_time_ms": 5000,
                                       "grpc.keepalive_timeout_ms": 5000,
                                       "grpc.keepalive_permit_without_calls": 1})
        self._client = client
        resp = await client.get_prefix(PREFIX, keys_only=True)
        keys = {kv.key[len(PREFIX):].decode(errors="replace"): kv.create_revision for kv in resp}
        present = set(keys)
        revision = resp.header.revision
        watch = await client.watch_prefix(PREFIX, start_revision=revision + 1)
        await self._sync_health(present)
        if self.on_snapshot is not None:
            await self.on_snapshot(keys, revision)
        self.online = present
        self.syncs += 1
        self.link.transition(LinkState.SYNCED)
        log.info("etcd health synced at revision %d: %d host(s) online", revision, len(present))
        async for event in watch:
            host_id = event.kv.key[len(PREFIX):].decode(errors="replace")
            if not host_id:
                continue
            if event.kind == "PUT":
                self.online.add(host_id)
                await self._set_health(host_id, HostHealth.ONLINE)
            elif event.kind == "DELETE":
                self.online.discard(host_id)
                log.info("host %s health key gone: offline", host_id)
                await self._set_health(host_id, HostHealth.OFFLINE)
            if self.on_event is not None:
                await self.on_event(event.kind, host_id, event.kv.create_revision,
                                    event.kv.mod_revision, event.kv.value or b"")

    async def _close_client(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            await asyncio.wait_for(client.close(), 5)
        except Exception as exc:  # noqa: BLE001 - closing a broken client
            log.debug("closing etcd client: %s", exc)
