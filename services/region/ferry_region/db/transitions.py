"""State changes enforced by the database with conditional UPDATEs.

Each function issues one `UPDATE ... WHERE <key> AND <state> IN (:allowed)`;
a row count of 0 means the row moved on (or never was in an allowed state),
and the caller gets the domain error that names the current state. Nothing
here reads-then-writes, so two concurrent callers can never both win.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ferry_common.errors import Aborted, FailedPrecondition, NotFound

from ..states import SERVER_TRANSITIONS, ServerStatus, allowed_from
from .engine import affected
from .models import Server, utcnow


def _names(states: Iterable[ServerStatus]) -> str:
    return ", ".join(sorted(s.value for s in states))


def _explain(session: Session, server_id: str, new: ServerStatus,
             allowed: frozenset[ServerStatus], *, task_id: str | None,
             acquiring: bool) -> Exception:
    row = session.execute(select(Server.status, Server.task_id)
                          .where(Server.id == server_id)).one_or_none()
    if row is None:
        return NotFound("server", server_id)
    status, holder = row
    if acquiring and holder is not None:
        return Aborted(f"server {server_id} is busy: task {holder} is running on it",
                       metadata={"server_id": server_id, "task_id": holder,
                                 "state": status.value})
    if not acquiring and task_id is not None and holder != task_id:
        return Aborted(f"server {server_id} is held by task {holder}, not {task_id}",
                       metadata={"server_id": server_id, "task_id": holder or "",
                                 "state": status.value})
    return FailedPrecondition(
        f"server {server_id} is {status.value}; {new.value} is only reachable from "
        f"{_names(allowed)}", state=status.value,
        metadata={"server_id": server_id, "target": new.value})


def acquire_server(session: Session, server_id: str, task_id: str,
                   new: ServerStatus) -> None:
    """Takes the server for `task_id` and moves it to `new`, atomically.

    Raises Aborted naming the running task when another task holds the server,
    FailedPrecondition naming the current status when the table forbids `new`.
    """
    allowed = allowed_from(SERVER_TRANSITIONS, new)
    n = affected(session,
                 update(Server)
                 .where(Server.id == server_id, Server.task_id.is_(None),
                        Server.status.in_(allowed))
                 .values(task_id=task_id, status=new, status_reason="", updated_at=utcnow())
                 .execution_options(synchronize_session=False))
    if n != 1:
        raise _explain(session, server_id, new, allowed, task_id=task_id, acquiring=True)


def transition_server(session: Session, server_id: str, new: ServerStatus, *,
                      task_id: str | None = None, reason: str | None = None,
                      extra: dict[str, Any] | None = None) -> None:
    """Moves a server to `new` if the table allows it from its current status.

    Re-entering the current status is a no-op success (idempotent resume). With
    `task_id`, the server must also be held by that task.
    """
    allowed = allowed_from(SERVER_TRANSITIONS, new) | {new}
    conds = [Server.id == server_id, Server.status.in_(allowed)]
    if task_id is not None:
        conds.append(Server.task_id == task_id)
    values: dict[str, Any] = {"status": new, "updated_at": utcnow()}
    if reason is not None:
        values["status_reason"] = reason
    values.update(extra or {})
    n = affected(session, update(Server).where(*conds).values(**values)
                 .execution_options(synchronize_session=False))
    if n != 1:
        raise _explain(session, server_id, new, allowed, task_id=task_id, acquiring=False)


def release_server(session: Session, server_id: str, task_id: str) -> bool:
    """Clears the server's task if `task_id` still holds it."""
    return affected(session, update(Server)
                    .where(Server.id == server_id, Server.task_id == task_id)
                    .values(task_id=None, updated_at=utcnow())
                    .execution_options(synchronize_session=False)) == 1
