"""Exactly-once bookkeeping of vanished health keys (SQLite, no processes)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from ferry_region.db.engine import Database
from ferry_region.hostdown_states import IncidentState
from ferry_region.hostdown_store import HostDownStore, IncidentStateError


@pytest.fixture
def store(tmp_path: Path):
    db = Database(f"sqlite:///{tmp_path / 'region.db'}")
    db.migrate()
    yield HostDownStore(db)
    asyncio.run(db.close())


def test_a_vanished_key_opens_one_incident_whatever_the_path(store) -> None:
    async def run() -> None:
        assert await store.snapshot({"h1": 10, "h2": 11}, 12) == []
        first = await store.event("DELETE", "h1", 0, 20)
        assert first
        # The same loss seen again by a resync after a reconnect or region restart:
        assert await store.snapshot({"h2": 11}, 25) == []
        assert await store.event("DELETE", "h1", 0, 20) is None
        assert await store.cursor() == 25
        # The host comes back (a new key, a new create revision) and dies again while the
        # region is away: the snapshot finds it gone, a second, distinct incident.
        await store.event("PUT", "h1", 30, 30)
        again = await store.snapshot({"h2": 11}, 40)
        assert len(again) == 1 and again[0] != first
        rows = await store.incidents("h1")
        assert [(r.key_revision, r.state) for r in rows] == [(10, IncidentState.WAITING),
                                                             (30, IncidentState.WAITING)]
        # A key that died and came back while nobody watched: alive, nothing to do.
        assert await store.snapshot({"h1": 50, "h2": 45}, 50) == []
    asyncio.run(run())


def test_incident_transitions_are_enforced(store) -> None:
    async def run() -> None:
        await store.snapshot({"h1": 1}, 1)
        iid = await store.event("DELETE", "h1", 0, 2)
        await store.transition(iid, IncidentState.WAITING, IncidentState.RESCUING, "x")
        with pytest.raises(IncidentStateError):
            await store.transition(iid, IncidentState.WAITING, IncidentState.CANCELLED, "late")
        with pytest.raises(IncidentStateError):
            await store.transition(iid, IncidentState.RESCUING, IncidentState.WAITING, "back")
        await store.transition(iid, IncidentState.RESCUING, IncidentState.DONE, "ok", {"s": {}})
        assert [r.state for r in await store.open_incidents()] == []
    asyncio.run(run())


def test_an_announced_shutdown_names_the_incident(store) -> None:
    async def run() -> None:
        await store.event("PUT", "h1", 5, 5)
        await store.event("PUT", "h1", 5, 6, shutdown=True)
        iid = await store.event("DELETE", "h1", 0, 7)
        [row] = await store.incidents("h1")
        assert row.id == iid and row.kind == "shutdown" and row.key_revision == 5
        # The next lease period is an ordinary one again.
        await store.event("PUT", "h1", 8, 8)
        await store.event("DELETE", "h1", 0, 9)
        assert [r.kind for r in await store.incidents("h1")] == ["shutdown", "down"]
    asyncio.run(run())
