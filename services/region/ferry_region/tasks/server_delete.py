"""SERVER_DELETE: stop_guest -> delete_guest -> delete_rows -> done.

A server never placed skips straight to delete_rows. Every host call is
idempotent (a guest the host does not know is already gone). A failure ends
in delete_fail with the reason; deleting again retries.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from ..db.models import Server
from ..states import ServerStatus, TaskKind
from .base import StageEnum, StepResult, TaskContext, TaskDefinition
from .common import is_not_found, placed_server


class DeleteStage(StageEnum):
    STOP_GUEST = "stop_guest"
    DELETE_GUEST = "delete_guest"
    DELETE_ROWS = "delete_rows"
    DONE = "done"
    ROLLBACK = "rollback"
    FAILED = "failed"


D = DeleteStage


class ServerDeleteTask(TaskDefinition):
    kind = TaskKind.SERVER_DELETE
    Stage = DeleteStage
    FIRST = D.STOP_GUEST
    TRANSITIONS = {
        D.STOP_GUEST: frozenset({D.DELETE_GUEST, D.DELETE_ROWS, D.ROLLBACK}),
        D.DELETE_GUEST: frozenset({D.DELETE_ROWS, D.ROLLBACK}),
        D.DELETE_ROWS: frozenset({D.DONE, D.ROLLBACK}),
        D.ROLLBACK: frozenset({D.FAILED}),
    }

    async def stage_stop_guest(self, ctx: TaskContext) -> StepResult:
        server = await ctx.server()
        if server is None or not server.host_id:
            return StepResult(next=D.DELETE_ROWS)
        server, address = await placed_server(ctx)
        try:
            await ctx.deps.agents.stop_guest(address, server.id, force=False,
                                             stop_timeout=ctx.deps.config.timeouts.stop_guest)
        except Exception as exc:
            if not is_not_found(exc):
                raise
        return StepResult(next=D.DELETE_GUEST, data={"host_id": server.host_id})

    async def stage_delete_guest(self, ctx: TaskContext) -> StepResult:
        server, address = await placed_server(ctx)
        try:
            await ctx.deps.agents.delete_guest(address, server.id, delete_shared_disks=True)
        except Exception as exc:
            if not is_not_found(exc):
                raise
        return StepResult(next=D.DELETE_ROWS)

    async def stage_delete_rows(self, ctx: TaskContext) -> StepResult:
        server = await ctx.server()
        host_id = server.host_id if server is not None else None

        def delete(session: Session, _ctx: TaskContext) -> None:
            row = session.get(Server, ctx.server_id)
            if row is not None:
                session.delete(row)

        return StepResult(next=D.DONE, apply=delete,
                          hosts_changed=(host_id,) if host_id else ())

    async def stage_rollback(self, ctx: TaskContext) -> StepResult:
        return StepResult(next=D.FAILED)

    def failed_status(self, ctx: TaskContext) -> ServerStatus:
        return ServerStatus.DELETE_FAIL
