"""What a task kind is: an Enum of stages, a declarative transition table and
one idempotent step per stage.

A kind subclasses `TaskDefinition` and declares:

- `Stage`: a `StageEnum` with its stages, including the terminal `DONE` and
  `FAILED` and the first rollback stage `ROLLBACK`;
- `TRANSITIONS`: stage -> stages it may move to (checked in Python and enforced
  in the database by `UPDATE tasks ... WHERE stage = :current`);
- `FIRST`; `NOT_RESUMABLE`: stages that cannot be re-entered after a region
  restart (the task rolls back instead);
- one coroutine `stage_<value>(ctx)` per non-terminal stage, returning a
  `StepResult` (next stage, data to persist, server status to set; all
  committed in one transaction with the stage change).

Forward steps must be idempotent: after a crash the engine runs the stored
stage again. Rollback steps must not raise: they record what they could not
undo in `ctx.note()` and move on, so a rollback always ends.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy.orm import Session

from ..states import ServerStatus, TaskKind

if TYPE_CHECKING:
    from ..db.models import Server
    from .deps import TaskDeps

log = logging.getLogger(__name__)


class StageEnum(str, enum.Enum):
    """Base of every kind's stage Enum; values are lower_snake_case names."""


@dataclass
class StepResult:
    #: Next stage; None means the next one in the kind's forward order.
    next: StageEnum | None = None
    #: Merged into the task's persisted `data`.
    data: dict[str, Any] = field(default_factory=dict)
    #: Server status to set in the same transaction (checked against the table).
    server_status: ServerStatus | None = None
    #: status_reason to store with server_status.
    status_reason: str | None = None
    #: Extra row changes in the same transaction: fn(session, ctx).
    apply: Callable[[Session, TaskContext], None] | None = None
    #: Host ids whose usage changed (published to WatchHosts after commit).
    hosts_changed: tuple[str, ...] = ()


@dataclass
class TaskSnapshot:
    id: str
    kind: TaskKind
    state: str
    stage: str
    server_id: str
    params: dict[str, Any]
    data: dict[str, Any]
    history: list[str]
    resume_count: int
    error: str
    error_reason: str
    cancel_requested: bool = False


class TaskContext:
    """What a step sees: the task, the region's dependencies, a few helpers."""

    def __init__(self, task: TaskSnapshot, deps: TaskDeps, *, resumed: bool) -> None:
        self.task = task
        self.deps = deps
        self.resumed = resumed
        self.notes: list[str] = []
        self.log = logging.LoggerAdapter(log, {"task_id": task.id})

    @property
    def params(self) -> dict[str, Any]:
        return self.task.params

    @property
    def data(self) -> dict[str, Any]:
        return self.task.data

    @property
    def server_id(self) -> str:
        return self.task.server_id

    def note(self, message: str) -> None:
        """Records something a rollback step could not undo (kept in task data)."""
        self.log.warning("task %s: %s", self.task.id, message)
        self.notes.append(message)

    async def server(self) -> Server | None:
        from ..db.queries import load_server
        return await self.deps.db.read(load_server, self.task.server_id)


class TaskDefinition:
    kind: ClassVar[TaskKind]
    Stage: ClassVar[type[StageEnum]]
    TRANSITIONS: ClassVar[Mapping[Any, frozenset[Any]]]
    FIRST: ClassVar[Any]
    NOT_RESUMABLE: ClassVar[frozenset[Any]] = frozenset()
    #: Per-stage deadline overrides (seconds); default from config.timeouts.stage.
    STAGE_TIMEOUTS: ClassVar[Mapping[Any, float]] = {}

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if not hasattr(cls, "Stage"):
            return
        st = cls.Stage
        for required in ("DONE", "FAILED", "ROLLBACK"):
            if required not in st.__members__:
                raise TypeError(f"{cls.__name__}.Stage lacks {required}")
        table = cls.TRANSITIONS
        for stage in st:
            terminal = stage in (st.DONE, st.FAILED)  # type: ignore[attr-defined]
            if terminal and table.get(stage):
                raise TypeError(f"{cls.__name__}: terminal stage {stage.value} has transitions")
            if not terminal:
                if stage not in table:
                    raise TypeError(f"{cls.__name__}: stage {stage.value} missing from TRANSITIONS")
                if not hasattr(cls, f"stage_{stage.value}"):
                    raise TypeError(f"{cls.__name__}: no step stage_{stage.value}")
        for stage in cls.forward_stages():
            if st.ROLLBACK not in table[stage]:  # type: ignore[attr-defined]
                raise TypeError(f"{cls.__name__}: {stage.value} cannot roll back")

    def __init__(self, deps: TaskDeps) -> None:
        self.deps = deps

    # --- the declarative structure ---

    @classmethod
    def done(cls) -> StageEnum:
        return cls.Stage.DONE  # type: ignore[attr-defined]

    @classmethod
    def failed(cls) -> StageEnum:
        return cls.Stage.FAILED  # type: ignore[attr-defined]

    @classmethod
    def rollback_entry(cls) -> StageEnum:
        return cls.Stage.ROLLBACK  # type: ignore[attr-defined]

    @classmethod
    def rollback_stages(cls) -> list[StageEnum]:
        """ROLLBACK and every stage reachable from it, before FAILED."""
        out, todo = [], [cls.rollback_entry()]
        while todo:
            s = todo.pop(0)
            if s in out or s in (cls.done(), cls.failed()):
                continue
            out.append(s)
            todo.extend(sorted(cls.TRANSITIONS.get(s, ()), key=list(cls.Stage).index))
        return out

    @classmethod
    def forward_stages(cls) -> list[StageEnum]:
        back = set(cls.rollback_stages())
        return [s for s in cls.Stage if s not in back and s not in (cls.done(), cls.failed())]

    @classmethod
    def default_next(cls, stage: StageEnum) -> StageEnum:
        """The next stage in declaration order that the table allows."""
        order = list(cls.Stage)
        allowed = cls.TRANSITIONS[stage]
        rollback = stage in cls.rollback_stages()
        for cand in order[order.index(stage) + 1:]:
            if cand in allowed and (rollback or cand not in cls.rollback_stages()):
                return cand
        return cls.failed() if rollback else cls.done()

    @classmethod
    def is_allowed(cls, old: StageEnum, new: StageEnum) -> bool:
        return new in cls.TRANSITIONS.get(old, frozenset())

    def stage_timeout(self, stage: StageEnum) -> float:
        return self.STAGE_TIMEOUTS.get(stage, self.deps.config.timeouts.stage)

    async def run_stage(self, stage: StageEnum, ctx: TaskContext) -> StepResult:
        step = getattr(self, f"stage_{stage.value}")
        result = await step(ctx)
        return result if result is not None else StepResult()

    # --- what the engine asks when a task ends badly ---

    def failed_status(self, ctx: TaskContext) -> ServerStatus | None:
        """Server status after the rollback (None: leave it)."""
        return None

    def description(self) -> str:
        return self.kind.value
