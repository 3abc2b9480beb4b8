"""The scheduler's view of the hosts, fed by the region's WatchHosts stream.

`HostCache` holds one `HostView` per host, indexed by id and by name. The
watcher (`watcher.py`) applies the region's first message as a snapshot, then
each change; placements read the cache and never the region. While the link to
the region is down the last view keeps serving, marked stale with the reason.

Listeners (the reservation book) hear every host update and removal, so
confirmed reservations settle once the region's usage includes them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from .clock import Clock
from .model import HostView

log = logging.getLogger(__name__)


class HostListener(Protocol):
    def on_host_update(self, old: HostView | None, new: HostView) -> None: ...

    def on_host_removed(self, host_id: str) -> None: ...


class HostCache:
    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or Clock()
        self._hosts: dict[str, HostView] = {}
        self._by_name: dict[str, str] = {}
        self._listeners: list[HostListener] = []
        self.version = 0                  # bumped on every applied message
        self.synced = False               # a snapshot was applied at least once
        self.stale = True                 # no live stream behind the view right now
        self.stale_reason = "no snapshot from the region yet"
        self._stale_since: float | None = self._clock.monotonic()
        self._changed = asyncio.Event()   # set and replaced on every change

    # ---- reads ----

    def __len__(self) -> int:
        return len(self._hosts)

    def hosts(self) -> Iterable[HostView]:
        return self._hosts.values()

    def get(self, host_id: str) -> HostView | None:
        return self._hosts.get(host_id)

    def find(self, ident: str) -> HostView | None:
        """A host by id, else by name."""
        host = self._hosts.get(ident)
        if host is None:
            hid = self._by_name.get(ident)
            host = self._hosts.get(hid) if hid is not None else None
        return host

    def stale_for(self) -> float:
        """Seconds the view has been stale (0 when fresh)."""
        if not self.stale or self._stale_since is None:
            return 0.0
        return self._clock.monotonic() - self._stale_since

    # ---- writes (from the watcher) ----

    def add_listener(self, listener: HostListener) -> None:
        self._listeners.append(listener)

    def apply_snapshot(self, hosts: Iterable[HostView]) -> None:
        """Replaces the whole view: hosts missing from the snapshot are removed."""
        fresh = {h.id: h for h in hosts}
        for host_id in [hid for hid in self._hosts if hid not in fresh]:
            self._remove(host_id)
        for h in fresh.values():
            self._put(h)
        self.synced = True
        if self.stale:
            log.info("host view fresh: snapshot of %d host(s)", len(fresh))
        self.stale = False
        self.stale_reason = ""
        self._stale_since = None
        self._bump()

    def apply_changes(self, hosts: Iterable[HostView], removed_ids: Iterable[str]) -> None:
        for host_id in removed_ids:
            self._remove(host_id)
        for h in hosts:
            self._put(h)
        self._bump()

    def mark_stale(self, reason: str) -> None:
        if not self.stale:
            self._stale_since = self._clock.monotonic()
            log.warning("host view stale (%d host(s) kept): %s", len(self._hosts), reason)
        self.stale = True
        self.stale_reason = reason
        self._bump()

    async def wait_for(self, predicate: Callable[[HostCache], bool], timeout: float) -> None:
        """Waits until `predicate(cache)` holds (tests, start-up); TimeoutError otherwise."""
        async with asyncio.timeout(timeout):
            while not predicate(self):
                await self._changed.wait()

    # ---- internals ----

    def _put(self, host: HostView) -> None:
        old = self._hosts.get(host.id)
        if old is not None and old.name != host.name and self._by_name.get(old.name) == host.id:
            del self._by_name[old.name]
        self._hosts[host.id] = host
        if host.name:
            self._by_name[host.name] = host.id
        for listener in self._listeners:
            listener.on_host_update(old, host)

    def _remove(self, host_id: str) -> None:
        old = self._hosts.pop(host_id, None)
        if old is None:
            return
        if self._by_name.get(old.name) == host_id:
            del self._by_name[old.name]
        for listener in self._listeners:
            listener.on_host_removed(host_id)

    def _bump(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()
