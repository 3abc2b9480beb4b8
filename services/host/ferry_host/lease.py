"""The host's health key in etcd, kept alive under a lease.

Key `/onecloud/kvm/host/health/<host_id>`, value JSON `{"host_id", "address",
"time"}`, attached to a lease of `ttl` seconds refreshed every ttl/3. When etcd
goes away, restarts without its data, or the lease is revoked behind our back,
the link goes LOST and a fresh client grants a new lease and puts the key
again, with backoff. On clean shutdown the lease is revoked, so the key
disappears at once (the region reads that as the host going offline).

The link is an explicit state machine (see `TRANSITIONS`); `state`,
`grants` and `last_error` show what it is doing, so failures are visible
rather than swallowed.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import aetcd
from ferry_common.states import StateMachine

log = logging.getLogger(__name__)

KEY_PREFIX = "/onecloud/kvm/host/health/"


class LeaseState(enum.Enum):
    IDLE = "idle"          # not started
    GRANTING = "granting"  # asking etcd for a lease and putting the key
    HELD = "held"          # key present, lease refreshed every ttl/3
    LOST = "lost"          # etcd unreachable or lease gone; retrying with backoff
    CLOSED = "closed"      # stopped (lease revoked if it could be)


TRANSITIONS = {
    LeaseState.IDLE: {LeaseState.GRANTING, LeaseState.CLOSED},
    LeaseState.GRANTING: {LeaseState.HELD, LeaseState.LOST, LeaseState.CLOSED},
    LeaseState.HELD: {LeaseState.LOST, LeaseState.CLOSED},
    LeaseState.LOST: {LeaseState.GRANTING, LeaseState.CLOSED},
    LeaseState.CLOSED: set(),
}


class LeaseLost(Exception):
    """etcd says our lease no longer exists."""


def health_key(host_id: str) -> str:
    return f"{KEY_PREFIX}{host_id}"


def _split_endpoint(endpoint: str) -> tuple[str, int]:
    endpoint = endpoint.removeprefix("http://")
    host, _, port = endpoint.rpartition(":")
    return host or "127.0.0.1", int(port or 2379)


class HealthLease:
    def __init__(self, endpoint: str, host_id: str, ttl: int,
                 value: Callable[[], dict],
                 on_renewed: Callable[[], object] | None = None,
                 before_grant: Callable[[], Awaitable[object]] | None = None) -> None:
        self.endpoint = endpoint
        # Hooks for the health keeper (ferry_host.health): called after every
        # successful grant or refresh, and awaited before every grant.
        self._on_renewed = on_renewed
        self._before_grant = before_grant
        self.key = health_key(host_id)
        self.ttl = int(ttl)
        self._value = value
        self._host, self._port = _split_endpoint(endpoint)
        self._sm: StateMachine[LeaseState] = StateMachine(f"etcd lease {self.key}",
                                                          LeaseState.IDLE, TRANSITIONS)
        self._client: aetcd.Client | None = None
        self._task: asyncio.Task | None = None
        self.lease_id: int | None = None
        self.grants = 0
        self.last_error: BaseException | None = None
        self._held = asyncio.Event()
        self._last_why = ""

    @property
    def state(self) -> LeaseState:
        return self._sm.state

    @property
    def refresh_interval(self) -> float:
        return max(self.ttl / 3.0, 0.5)

    def start(self) -> None:
        self._sm.require("start", LeaseState.IDLE)
        self._task = asyncio.create_task(self._run(), name=f"lease {self.key}")

    async def wait_held(self, timeout: float) -> None:
        await asyncio.wait_for(self._held.wait(), timeout)

    def _transition(self, new: LeaseState, why: str = "") -> None:
        old = self._sm.state
        self._sm.transition(new)
        if new is LeaseState.HELD:
            self._held.set()
        else:
            self._held.clear()
        if new is LeaseState.LOST:
            # Loud once per outage (or when the cause changes), quiet while retrying.
            level = logging.WARNING if why != self._last_why else logging.DEBUG
            self._last_why = why
        elif new is LeaseState.GRANTING and old is LeaseState.LOST:
            level = logging.DEBUG
        else:
            level = logging.INFO
            self._last_why = ""
        log.log(level, "etcd lease %s: %s -> %s%s", self.key, old.name, new.name,
                f" ({why})" if why else "")

    def _new_client(self) -> aetcd.Client:
        return aetcd.Client(host=self._host, port=self._port, timeout=self.refresh_interval)

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.close()
            except Exception:
                log.debug("closing etcd client failed", exc_info=True)

    async def _run(self) -> None:
        backoff = 0.2
        while True:
            self._transition(LeaseState.GRANTING)
            try:
                if self._before_grant is not None:
                    await self._before_grant()
                self._client = self._new_client()
                lease = await self._client.lease(self.ttl)
                self.lease_id = lease.id  # known at once, so close() can revoke it
                value = json.dumps(self._value()).encode()
                await self._client.put(self.key.encode(), value, lease=lease)
                self.grants += 1
                self.last_error = None
                if self._on_renewed is not None:
                    self._on_renewed()
                self._transition(LeaseState.HELD, f"lease {lease.id:x}, ttl {self.ttl}s")
                backoff = 0.2
                await self._keep_alive(lease.id)
            except asyncio.CancelledError:
                raise
            except (aetcd.ClientError, LeaseLost, TimeoutError, OSError) as exc:
                self.last_error = exc
                why = f"{type(exc).__name__}: {exc}"
            except Exception as exc:
                self.last_error = exc
                log.exception("etcd lease %s: unexpected failure", self.key)
                why = f"unexpected {type(exc).__name__}: {exc}"
            self._transition(LeaseState.LOST, why)
            await self._drop_client()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.refresh_interval)

    async def _keep_alive(self, lease_id: int) -> None:
        assert self._client is not None
        while True:
            await asyncio.sleep(self.refresh_interval)
            reply = await asyncio.wait_for(self._client.refresh_lease(lease_id),
                                           self.refresh_interval)
            if reply is None or reply.TTL <= 0:
                raise LeaseLost(f"lease {lease_id:x} expired or was revoked")
            if self._on_renewed is not None:
                self._on_renewed()

    async def close(self, *, revoke: bool = True, timeout: float = 3.0) -> None:
        """Stops keeping the key and revokes the lease, deleting the key. Idempotent.

        If etcd cannot be reached the lease simply expires after its TTL.
        """
        if self._sm.state is LeaseState.CLOSED:
            return
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if revoke and self.lease_id is not None:
            client = self._client or self._new_client()
            self._client = client
            try:
                await asyncio.wait_for(client.revoke_lease(self.lease_id), timeout)
                log.info("etcd lease %s: revoked lease %x", self.key, self.lease_id)
            except Exception as exc:  # noqa: BLE001 - it expires by itself after ttl
                log.warning("etcd lease %s: revoke failed (%s); it expires within %ss",
                            self.key, exc, self.ttl)
        await self._drop_client()
        self._transition(LeaseState.CLOSED, "agent shutdown")


def health_value(host_id: str, address: Callable[[], str]) -> Callable[[], dict]:
    """The key's value: host id, agent address and the (UTC, ISO 8601) time of the put."""
    def value() -> dict:
        return {"host_id": host_id, "address": address(),
                "time": datetime.now(UTC).isoformat()}
    return value
