"""In-process change broadcasters feeding the `Watch*` streams.

Publishers call `publish(key)` after their transaction committed; each
subscriber owns a set of pending keys and an Event, so a slow subscriber
coalesces bursts instead of growing a queue. Subscriptions are context
managers and always unregister, also when the client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable


class Subscription:
    def __init__(self) -> None:
        self._pending: set[str] = set()
        self._event = asyncio.Event()
        self.closed = False

    def _push(self, keys: Iterable[str]) -> None:
        self._pending.update(keys)
        self._event.set()

    async def next(self, timeout: float | None = None) -> set[str]:
        """Keys changed since the last call; empty on timeout."""
        if not self._pending:
            try:
                await asyncio.wait_for(self._event.wait(), timeout)
            except TimeoutError:
                return set()
        keys, self._pending = self._pending, set()
        self._event.clear()
        return keys


class Broadcaster:
    """Fans change notifications (resource ids) out to subscribers."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._subs: set[Subscription] = set()

    def publish(self, *keys: str) -> None:
        if not keys:
            return
        for sub in list(self._subs):
            sub._push(keys)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[Subscription]:
        sub = Subscription()
        self._subs.add(sub)
        try:
            yield sub
        finally:
            sub.closed = True
            self._subs.discard(sub)

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)
