"""Operator cancel requests, for any task kind that can be cancelled.

A request is kept on the task row (`tasks.cancel_requested`, so a restarted
region honours it) and in this process's memory (so a running task checks it
between steps without a query: its snapshot was read when it started).
"""

from __future__ import annotations

from typing import Any

from .base import TaskContext
from .store import request_cancel, withdraw_cancel

_REQUESTED: set[str] = set()


async def request(db: Any, task_id: str) -> None:
    _REQUESTED.add(task_id)
    await db.write(request_cancel, task_id)


async def withdraw(db: Any, task_id: str) -> None:
    """Takes back a request the API found too late (the task passed its last check)."""
    _REQUESTED.discard(task_id)
    await db.write(withdraw_cancel, task_id)


def requested(ctx: TaskContext) -> bool:
    return ctx.task.id in _REQUESTED or ctx.task.cancel_requested


def forget(task_id: str) -> None:
    """The task acted on its request or ended."""
    _REQUESTED.discard(task_id)
