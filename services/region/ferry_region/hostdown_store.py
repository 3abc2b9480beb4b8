"""What the host-down detector persists: the watch cursor, the health keys seen, incidents.

A host's health key is named by its create revision: a key that vanished is
acted on once per (host, create revision), enforced by a unique constraint,
whether the region saw the DELETE event or, after its own restart or an etcd
outage, only found the key missing from the next snapshot. A key that
vanished and came back while the region was away has a new create revision
and a present key: nothing to do, the host is alive.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from .db.engine import Database, affected
from .db.models import HealthCursor, HealthKey, Host, HostDownIncident, utcnow
from .hostdown_states import INCIDENT_TRANSITIONS, OPEN_STATES, IncidentState

CURSOR = "host-health"


class IncidentStateError(Exception):
    """An incident was not in the state a transition expected."""


def _set_cursor(session: Session, revision: int) -> None:
    row = session.get(HealthCursor, CURSOR)
    if row is None:
        session.add(HealthCursor(name=CURSOR, revision=revision, updated_at=utcnow()))
    elif revision > row.revision:
        row.revision = revision
        row.updated_at = utcnow()


def _open_incident(session: Session, host_id: str, key_revision: int, seen: int,
                   kind: str = "down") -> str | None:
    exists = session.scalar(select(HostDownIncident.id).where(
        HostDownIncident.host_id == host_id, HostDownIncident.key_revision == key_revision))
    if exists is not None:
        return None
    iid = str(uuid.uuid4())
    now = utcnow()
    session.add(HostDownIncident(id=iid, host_id=host_id, key_revision=key_revision,
                                 seen_revision=seen, state=IncidentState.WAITING, kind=kind,
                                 reason="",
                                 results={}, detected_at=now, updated_at=now))
    return iid


class HostDownStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def cursor(self) -> int:
        def tx(session: Session) -> int:
            row = session.get(HealthCursor, CURSOR)
            return row.revision if row else 0
        return await self.db.read(tx)

    async def snapshot(self, keys: dict[str, int], revision: int) -> list[str]:
        """Applies a (re)sync's snapshot; returns ids of incidents it opened."""
        def tx(session: Session) -> list[str]:
            opened = []
            rows = {r.host_id: r for r in session.scalars(select(HealthKey))}
            for host_id, row in rows.items():
                if row.present and host_id not in keys:
                    iid = _open_incident(session, host_id, row.create_revision, revision,
                                         "shutdown" if row.shutdown else "down")
                    if iid:
                        opened.append(iid)
                    row.present = False
                    row.updated_at = utcnow()
            for host_id, create_rev in keys.items():
                row = rows.get(host_id)
                if row is None:
                    session.add(HealthKey(host_id=host_id, create_revision=create_rev,
                                          present=True, shutdown=False, updated_at=utcnow()))
                elif not row.present or row.create_revision != create_rev:
                    row.present, row.create_revision, row.updated_at = True, create_rev, utcnow()
                    row.shutdown = False
            _set_cursor(session, revision)
            return opened
        return await self.db.write(tx)

    async def event(self, kind: str, host_id: str, create_rev: int, revision: int,
                    shutdown: bool = False) -> str | None:
        """Applies one watch event; returns the id of an incident a DELETE opened.
        `shutdown`: a PUT's value announces a shutdown on purpose."""
        def tx(session: Session) -> str | None:
            row = session.get(HealthKey, host_id)
            opened = None
            if kind == "PUT":
                if row is None:
                    session.add(HealthKey(host_id=host_id, create_revision=create_rev,
                                          present=True, shutdown=shutdown, updated_at=utcnow()))
                else:
                    row.present, row.create_revision, row.updated_at = True, create_rev, utcnow()
                    row.shutdown = shutdown
            elif kind == "DELETE":
                if row is None:  # never seen: name the incident by the delete revision
                    opened = _open_incident(session, host_id, revision, revision)
                    session.add(HealthKey(host_id=host_id, create_revision=revision,
                                          present=False, shutdown=False, updated_at=utcnow()))
                elif row.present:
                    opened = _open_incident(session, host_id, row.create_revision, revision,
                                            "shutdown" if row.shutdown else "down")
                    row.present, row.updated_at = False, utcnow()
                # else: that key's loss is already recorded (a replayed event)
            _set_cursor(session, revision)
            return opened
        return await self.db.write(tx)

    async def open_incidents(self) -> list[HostDownIncident]:
        def tx(session: Session) -> list[HostDownIncident]:
            rows = list(session.scalars(select(HostDownIncident)
                                        .where(HostDownIncident.state.in_(OPEN_STATES))
                                        .order_by(HostDownIncident.detected_at)))
            session.expunge_all()
            return rows
        return await self.db.read(tx)

    async def incidents(self, host_id: str | None = None) -> list[HostDownIncident]:
        def tx(session: Session) -> list[HostDownIncident]:
            q = select(HostDownIncident).order_by(HostDownIncident.detected_at)
            if host_id:
                q = q.where(HostDownIncident.host_id == host_id)
            rows = list(session.scalars(q))
            session.expunge_all()
            return rows
        return await self.db.read(tx)

    async def transition(self, iid: str, expected: IncidentState, new: IncidentState,
                         reason: str | None = None,
                         results: dict[str, Any] | None = None) -> None:
        if new not in INCIDENT_TRANSITIONS[expected]:
            raise IncidentStateError(f"incident {iid}: {expected.name} -> {new.name} not allowed")

        def tx(session: Session) -> None:
            values: dict[str, Any] = {"state": new, "updated_at": utcnow()}
            if reason is not None:
                values["reason"] = reason
            if results is not None:
                values["results"] = results
            if affected(session, update(HostDownIncident).where(
                    HostDownIncident.id == iid, HostDownIncident.state == expected)
                    .values(**values)) != 1:
                raise IncidentStateError(f"incident {iid} is no longer {expected.name}")
        await self.db.write(tx)

    async def save_results(self, iid: str, results: dict[str, Any]) -> None:
        def tx(session: Session) -> None:
            session.execute(update(HostDownIncident).where(HostDownIncident.id == iid)
                            .values(results=dict(results), updated_at=utcnow()))
        await self.db.write(tx)

    async def recent_share(self, since: dt.datetime) -> tuple[int, int]:
        """(hosts whose key vanished unannounced since `since`, hosts in total); hosts
        shut down on purpose do not count: they say nothing about etcd or the network."""
        def tx(session: Session) -> tuple[int, int]:
            recent = session.scalar(select(func.count(func.distinct(HostDownIncident.host_id)))
                                    .where(HostDownIncident.detected_at >= since,
                                           HostDownIncident.kind == "down")) or 0
            total = session.scalar(select(func.count()).select_from(Host)) or 0
            return recent, total
        return await self.db.read(tx)
