"""Task queries: list, get, and a watch that yields the task on every change."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from sqlalchemy import select
from sqlalchemy.orm import Session

from ferry_common.errors import InvalidArgument, NotFound
from ferry_common.validation import check_ident

from ..db.engine import Database
from ..db.models import Server, Task
from ..db.queries import find_task
from ..states import TASK_ACTIVE, TaskState
from ..tasks import TaskEngine

DEFAULT_LIMIT, MAX_LIMIT = 50, 1000


class TaskQueries:
    def __init__(self, db: Database, engine: TaskEngine) -> None:
        self.db = db
        self.engine = engine

    async def list_tasks(self, server: str = "", state: TaskState | None = None,
                   limit: int = 0) -> list[Task]:
        if server:
            check_ident("server", server)
        if limit < 0 or limit > MAX_LIMIT:
            raise InvalidArgument("limit", f"must be between 1 and {MAX_LIMIT} (0 means "
                                           f"{DEFAULT_LIMIT}), got {limit}")
        n = limit or DEFAULT_LIMIT

        def tx(session: Session) -> list[Task]:
            stmt = select(Task)
            if server:
                sid = session.scalar(select(Server.id).where(
                    (Server.id == server) | (Server.name == server)))
                if sid is None:
                    # A deleted server's tasks stay listable by its id.
                    if session.scalar(select(Task.id).where(Task.server_id == server)
                                      .limit(1)) is None:
                        raise NotFound("server", server)
                    sid = server
                stmt = stmt.where(Task.server_id == sid)
            if state is not None:
                stmt = stmt.where(Task.state == state)
            stmt = stmt.order_by(Task.created_at.desc(), Task.id.desc()).limit(n)
            return list(session.scalars(stmt).all())
        return await self.db.read(tx)

    async def get(self, task_id: str) -> Task:
        check_ident("id", task_id)
        return await self.db.read(find_task, task_id)

    async def watch(self, task_id: str, *, poll: float = 1.0) -> AsyncGenerator[Task, None]:
        """Yields the task now and after every change, until it ended."""
        check_ident("id", task_id)
        last = None
        async with self.engine.events.subscribe() as sub:
            while True:
                task = await self.db.read(find_task, task_id)
                key = (task.state, task.stage, len(task.history or []), task.updated_at)
                if key != last:
                    last = key
                    yield task
                if task.state not in TASK_ACTIVE:
                    return
                await sub.next(timeout=poll)
