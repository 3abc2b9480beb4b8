"""Task rows: creation, conditional stage/state changes, resume bookkeeping.

Stage and state changes are `UPDATE tasks ... WHERE id = :id AND stage = :current
AND state = :current_state`; a row count of 0 means someone else moved the task
and the caller must stop driving it (`LostTask`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from ..db.engine import affected
from ..db.models import Server, Task, utcnow
from ..db.transitions import release_server, transition_server
from ..states import (
    TASK_ACTIVE,
    TASK_STATE_TRANSITIONS,
    TRANSITIONAL,
    ServerStatus,
    TaskKind,
    TaskState,
)
from .base import StageEnum, TaskSnapshot

#: Where a server left in a transitional status without a live task goes.
FAIL_OF: dict[ServerStatus, ServerStatus] = {
    ServerStatus.INIT: ServerStatus.SCHED_FAIL,
    ServerStatus.SCHEDULING: ServerStatus.SCHED_FAIL,
    ServerStatus.CREATING: ServerStatus.CREATE_FAIL,
    ServerStatus.STARTING: ServerStatus.START_FAIL,
    ServerStatus.STOPPING: ServerStatus.STOP_FAIL,
    ServerStatus.DELETING: ServerStatus.DELETE_FAIL,
    ServerStatus.START_MIGRATE: ServerStatus.MIGRATE_FAILED,
    ServerStatus.MIGRATING: ServerStatus.MIGRATE_FAILED,
    ServerStatus.LIVE_MIGRATING: ServerStatus.MIGRATE_FAILED,
}


class LostTask(Exception):
    """The task row is no longer in the stage/state this runner expected."""


def new_id() -> str:
    return str(uuid.uuid4())


def insert_task(session: Session, kind: TaskKind, server_id: str, first: StageEnum,
                params: dict[str, Any], *, task_id: str | None = None) -> Task:
    now = utcnow()
    task = Task(id=task_id or new_id(), kind=kind, state=TaskState.RUNNING, stage=first.value,
                server_id=server_id, params=params, data={}, error="", error_reason="",
                history=[first.value], resume_count=0, created_at=now, updated_at=now)
    session.add(task)
    session.flush()
    return task


def snapshot(session: Session, task_id: str) -> TaskSnapshot | None:
    t = session.get(Task, task_id)
    if t is None:
        return None
    return TaskSnapshot(id=t.id, kind=t.kind, state=t.state.value, stage=t.stage,
                        server_id=t.server_id, params=dict(t.params or {}),
                        data=dict(t.data or {}), history=list(t.history or []),
                        resume_count=t.resume_count, error=t.error,
                        error_reason=t.error_reason, cancel_requested=bool(t.cancel_requested))


def active_tasks(session: Session) -> list[TaskSnapshot]:
    ids = session.scalars(select(Task.id).where(Task.state.in_(TASK_ACTIVE))
                          .order_by(Task.created_at)).all()
    return [s for s in (snapshot(session, i) for i in ids) if s is not None]


def mark_resumed(session: Session, task_id: str) -> None:
    t = session.get(Task, task_id)
    if t is not None:
        t.resume_count += 1
        t.updated_at = utcnow()


def move(session: Session, snap: TaskSnapshot, new_stage: StageEnum, new_state: TaskState, *,
         data: dict[str, Any] | None = None, error: str | None = None,
         error_reason: str | None = None) -> None:
    """One conditional stage/state change of a task (history appended)."""
    old_state = TaskState(snap.state)
    if new_state != old_state and new_state not in TASK_STATE_TRANSITIONS[old_state]:
        raise ValueError(f"task state {old_state.value} -> {new_state.value} not allowed")
    now = utcnow()
    values: dict[str, Any] = {
        "stage": new_stage.value, "state": new_state, "updated_at": now,
        "history": [*snap.history, new_stage.value],
        "data": data if data is not None else snap.data,
    }
    if new_state in (TaskState.SUCCEEDED, TaskState.FAILED):
        values["finished_at"] = now
    if error is not None:
        values["error"] = error
    if error_reason is not None:
        values["error_reason"] = error_reason
    n = affected(session, update(Task)
                 .where(Task.id == snap.id, Task.stage == snap.stage, Task.state == old_state)
                 .values(**values).execution_options(synchronize_session=False))
    if n != 1:
        raise LostTask(f"task {snap.id} moved away from {snap.state}/{snap.stage}")


def commit_step(session: Session, snap: TaskSnapshot, new_stage: StageEnum,
                new_state: TaskState, data: dict[str, Any],
                server_status: ServerStatus | None, status_reason: str | None,
                apply: Callable[[Session], None] | None) -> None:
    """A stage change with its server status change and row changes, atomically."""
    move(session, snap, new_stage, new_state, data=data)
    if server_status is not None:
        transition_server(session, snap.server_id, server_status, task_id=snap.id,
                          reason=status_reason)
    if apply is not None:
        apply(session)
    if new_state in (TaskState.SUCCEEDED, TaskState.FAILED):
        release_server(session, snap.server_id, snap.id)


def repair_orphans(session: Session) -> list[str]:
    """Servers held by a finished or missing task, or transitional without a task.

    Such rows cannot arise from the engine (release happens in the same
    transaction as the final stage change), but if one does, it must not stay
    transitional forever: release it and move it to the matching *_fail status.
    """
    repaired = []
    rows = session.execute(select(Server.id, Server.task_id, Server.status)
                           .where(or_(Server.task_id.is_not(None),
                                      Server.status.in_(TRANSITIONAL)))).all()
    active = set(session.scalars(select(Task.id).where(Task.state.in_(TASK_ACTIVE))).all())
    for sid, tid, status in rows:
        if tid is not None and tid in active:
            continue
        if tid is None and status not in TRANSITIONAL:
            continue
        if tid is not None:
            release_server(session, sid, tid)
        if status in TRANSITIONAL:
            transition_server(session, sid, FAIL_OF[status],
                              reason="left transitional without a running task; repaired at start")
        repaired.append(sid)
    return repaired


def request_cancel(session: Session, task_id: str) -> None:
    """Records an operator's cancel on an active task (the task checks it between steps)."""
    session.execute(update(Task).where(Task.id == task_id, Task.state.in_(TASK_ACTIVE))
                    .values(cancel_requested=True))


def withdraw_cancel(session: Session, task_id: str) -> None:
    session.execute(update(Task).where(Task.id == task_id).values(cancel_requested=False))
