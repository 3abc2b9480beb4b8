"""`--wait`: follow a task, printing its stages as they pass."""

from __future__ import annotations

from ferry_proto.region.v1 import resources_pb2

from ..enums import enum_to_str
from .context import Context


class StageReporter:
    """Prints each new stage once, then the task's final state."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.shown: list[str] = []
        self.state = 0

    def __call__(self, task: resources_pb2.Task) -> None:
        stages = list(task.history)
        if task.stage and (not stages or stages[-1] != task.stage):
            stages.append(task.stage)
        if stages[:len(self.shown)] == self.shown:
            new = stages[len(self.shown):]
        else:  # history rewritten (should not happen): show what is current
            new = [task.stage] if task.stage and (not self.shown or self.shown[-1] != task.stage) else []
        kind = enum_to_str(resources_pb2.TaskKind, task.kind) or "task"
        for stage in new:
            self.ctx.out.note(f"Task {task.id} ({kind}): {stage}")
            self.shown.append(stage)
        if task.state != self.state:
            self.state = task.state
            if task.state != resources_pb2.TASK_STATE_RUNNING:
                self.ctx.out.note(f"Task {task.id} ({kind}): "
                                  f"{enum_to_str(resources_pb2.TaskState, task.state).replace('_', ' ')}")


class WaitInterrupted(KeyboardInterrupt):
    """Ctrl-C during --wait: the task goes on in the region."""

    def __init__(self, task_id: str) -> None:
        super().__init__(task_id)
        self.task_id = task_id


def wait_for_task(ctx: Context, task_id: str) -> resources_pb2.Task:
    """Block until the task ends; raises TaskFailed / WaitTimeout (handled by main)."""
    try:
        return ctx.client.wait_task(task_id, timeout=ctx.wait_timeout, on_update=StageReporter(ctx))
    except KeyboardInterrupt:
        raise WaitInterrupted(task_id) from None
