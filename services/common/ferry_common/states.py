"""Explicit state machines for long-lived links and resources.

A `StateMachine` holds an Enum state and a declarative transition table; the
only way to change state is `transition()`, which checks the table, logs and
wakes waiters. `require()` raises `StateError` carrying both the current and
the required states (after qemu.qmp's Runstate/@require).
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Iterable, Mapping
from typing import Generic, TypeVar

S = TypeVar("S", bound=enum.Enum)
log = logging.getLogger(__name__)


class StateError(Exception):
    """An operation was attempted in a state that does not allow it."""

    def __init__(self, what: str, current: enum.Enum, required: Iterable[enum.Enum]) -> None:
        self.current = current
        self.required = tuple(required)
        names = ", ".join(s.name for s in self.required)
        super().__init__(f"{what}: state is {current.name}, needs one of {names}")


class StateMachine(Generic[S]):
    def __init__(self, name: str, initial: S, table: Mapping[S, Iterable[S]]) -> None:
        self.name = name
        self._state = initial
        self._table = {k: frozenset(v) for k, v in table.items()}
        self._changed = asyncio.Condition() if _has_loop() else None

    @property
    def state(self) -> S:
        return self._state

    def transition(self, new: S) -> None:
        allowed = self._table.get(self._state, frozenset())
        if new not in allowed:
            raise StateError(f"{self.name} -> {new.name}", self._state, allowed)
        log.debug("%s: %s -> %s", self.name, self._state.name, new.name)
        self._state = new
        if self._changed is not None:
            asyncio.ensure_future(self._notify())

    async def _notify(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    def require(self, what: str, *states: S) -> None:
        if self._state not in states:
            raise StateError(what, self._state, states)

    async def wait_for(self, *states: S) -> S:
        if self._changed is None:
            self._changed = asyncio.Condition()
        async with self._changed:
            await self._changed.wait_for(lambda: self._state in states)
        return self._state


def _has_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
