"""SERVER_START (start -> done) and SERVER_STOP (stop -> done).

The server was moved to starting/stopping when the task took it. A failure
ends in start_fail/stop_fail with the reason; after a failed start the guest
is force-stopped (best effort) so a half-started QEMU is not left behind.
"""

from __future__ import annotations

from ..states import ServerStatus, TaskKind
from .base import StageEnum, StepResult, TaskContext, TaskDefinition
from .common import is_not_found, placed_server


class StartStage(StageEnum):
    START = "start"
    DONE = "done"
    ROLLBACK = "rollback"
    FAILED = "failed"


class ServerStartTask(TaskDefinition):
    kind = TaskKind.SERVER_START
    Stage = StartStage
    FIRST = StartStage.START
    TRANSITIONS = {
        StartStage.START: frozenset({StartStage.DONE, StartStage.ROLLBACK}),
        StartStage.ROLLBACK: frozenset({StartStage.FAILED}),
    }

    async def stage_start(self, ctx: TaskContext) -> StepResult:
        server, address = await placed_server(ctx)
        await ctx.deps.agents.start_guest(address, server.id,
                                          timeout=ctx.deps.config.timeouts.start_guest)
        return StepResult(next=StartStage.DONE, server_status=ServerStatus.RUNNING)

    async def stage_rollback(self, ctx: TaskContext) -> StepResult:
        if ctx.task.error_reason not in ("PEER_UNAVAILABLE", "FAILED_PRECONDITION"):
            try:
                server, address = await placed_server(ctx)
                await ctx.deps.agents.stop_guest(address, server.id, force=True)
            except Exception as exc:  # noqa: BLE001 - recorded
                if not is_not_found(exc):
                    ctx.note(f"force-stopping the guest after a failed start failed: {exc}")
        return StepResult(next=StartStage.FAILED)

    def failed_status(self, ctx: TaskContext) -> ServerStatus:
        return ServerStatus.START_FAIL


class StopStage(StageEnum):
    STOP = "stop"
    DONE = "done"
    ROLLBACK = "rollback"
    FAILED = "failed"


class ServerStopTask(TaskDefinition):
    kind = TaskKind.SERVER_STOP
    Stage = StopStage
    FIRST = StopStage.STOP
    TRANSITIONS = {
        StopStage.STOP: frozenset({StopStage.DONE, StopStage.ROLLBACK}),
        StopStage.ROLLBACK: frozenset({StopStage.FAILED}),
    }

    async def stage_stop(self, ctx: TaskContext) -> StepResult:
        server, address = await placed_server(ctx)
        t = ctx.deps.config.timeouts
        try:
            await ctx.deps.agents.stop_guest(address, server.id,
                                             force=bool(ctx.params.get("force")),
                                             stop_timeout=t.stop_guest)
        except Exception as exc:
            if not is_not_found(exc):  # no such guest on the host: nothing runs
                raise
        return StepResult(next=StopStage.DONE, server_status=ServerStatus.READY)

    async def stage_rollback(self, ctx: TaskContext) -> StepResult:
        return StepResult(next=StopStage.FAILED)

    def failed_status(self, ctx: TaskContext) -> ServerStatus:
        return ServerStatus.STOP_FAIL
