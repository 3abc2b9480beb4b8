"""The persisted task engine.

One asyncio runner per active task drives it stage by stage: run the stage's
step under a deadline, then commit the next stage (with the server status and
row changes the step asked for) in one conditional transaction. A failed step
switches the task to ROLLING_BACK at the kind's ROLLBACK stage; rollback steps
always move on, and the final FAILED stage puts the server into its *_fail
status and releases it. Nothing is kept only in memory: after a crash,
`start()` resumes every RUNNING/ROLLING_BACK task from its stored stage (or
rolls it back when that stage cannot be resumed).

Callers await `launch()`ed work only through `wait()`; runner failures are
logged with their traceback and recorded on the task, never swallowed.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import functools
import logging
from collections.abc import Callable, Iterable, Mapping

from sqlalchemy.orm import Session

from ferry_common.errors import FerryError, Internal

from ..errors import StageTimeout, TaskInterrupted
from ..events import Broadcaster
from ..states import TASK_ACTIVE, TaskKind, TaskState
from . import store
from .base import StepResult, TaskContext, TaskDefinition, TaskSnapshot
from .deps import TaskDeps

log = logging.getLogger(__name__)

_BOOKKEEPING_RETRIES = 8


class TaskEngine:
    def __init__(self, deps: TaskDeps,
                 definitions: Iterable[type[TaskDefinition]] = ()) -> None:
        self.deps = deps
        self.events = Broadcaster("tasks")
        self._defs: dict[TaskKind, TaskDefinition] = {}
        for cls in definitions:
            self.register(cls)
        self._runners: dict[str, asyncio.Task[None]] = {}
        self._failures: collections.OrderedDict[str, BaseException] = collections.OrderedDict()
        self._accepting = False
        self._drained = False

    # --- set-up ---

    def register(self, cls: type[TaskDefinition]) -> None:
        self._defs[cls.kind] = cls(self.deps)

    def definition(self, kind: TaskKind) -> TaskDefinition:
        return self._defs[kind]

    @property
    def definitions(self) -> Mapping[TaskKind, TaskDefinition]:
        return self._defs

    async def start(self, *, resume: bool = True) -> list[str]:
        """Repairs orphans, then resumes every active task. Returns resumed ids."""
        self._accepting = True
        repaired = await self.deps.db.write(store.repair_orphans)
        if repaired:
            log.warning("repaired servers left without a live task: %s", repaired)
        if not resume:
            return []
        resumed = []
        for snap in await self.deps.db.read(store.active_tasks):
            defn = self._defs.get(snap.kind)
            if defn is None:
                log.error("task %s has unknown kind %s; left as is", snap.id, snap.kind)
                continue
            await self.deps.db.write(store.mark_resumed, snap.id)
            snap.resume_count += 1
            stage = defn.Stage(snap.stage)
            if snap.state == TaskState.RUNNING.value and stage in defn.NOT_RESUMABLE:
                exc = TaskInterrupted(f"region restarted during stage {stage.value}, "
                                      "which cannot be resumed")
                try:
                    await self._begin_rollback(snap, defn, stage, exc)
                except store.LostTask:
                    continue
            log.info("resuming task %s (%s) at %s/%s", snap.id, snap.kind.value, snap.state,
                     snap.stage)
            self.launch(snap.id, resumed=True)
            resumed.append(snap.id)
        return resumed

    # --- running ---

    def launch(self, task_id: str, *, resumed: bool = False) -> None:
        """Starts driving a task whose row is committed. No-op while shutting down
        (the task stays RUNNING in the database and resumes at the next start)."""
        if not self._accepting or task_id in self._runners:
            return
        runner = asyncio.create_task(self._run(task_id, resumed), name=f"task-{task_id}")
        self._runners[task_id] = runner
        runner.add_done_callback(functools.partial(self._runner_done, task_id))

    def _runner_done(self, task_id: str, runner: asyncio.Task[None]) -> None:
        self._runners.pop(task_id, None)
        if runner.cancelled():
            return
        exc = runner.exception()
        if exc is not None:
            log.error("task runner %s crashed; the task resumes at the next start",
                      task_id, exc_info=exc)

    @property
    def running(self) -> set[str]:
        return set(self._runners)

    async def _run(self, task_id: str, resumed: bool) -> None:
        attempts = 0
        while True:
            try:
                finished = await self._step_once(task_id, resumed)
                attempts = 0
            except asyncio.CancelledError:
                raise
            except store.LostTask as exc:
                log.warning("%s; runner stops", exc)
                return
            except Exception:  # engine bookkeeping (database) failed: retry, then give up
                attempts += 1
                if attempts > _BOOKKEEPING_RETRIES:
                    raise
                log.exception("task %s: bookkeeping failed (attempt %d); retrying", task_id,
                              attempts)
                await asyncio.sleep(min(0.2 * 2 ** attempts, 5.0))
                continue
            resumed = False
            if finished:
                return

    async def _step_once(self, task_id: str, resumed: bool) -> bool:
        """Runs the current stage of a task and commits its outcome. True when ended."""
        snap = await self.deps.db.read(store.snapshot, task_id)
        if snap is None or TaskState(snap.state) not in TASK_ACTIVE:
            return True
        defn = self._defs[snap.kind]
        stage = defn.Stage(snap.stage)
        ctx = TaskContext(snap, self.deps, resumed=resumed)
        if snap.state == TaskState.RUNNING.value:
            try:
                result = await self._run_step(defn, stage, ctx)
                nxt = result.next or defn.default_next(stage)
                if not defn.is_allowed(stage, nxt):
                    raise Internal(f"{defn.kind.value}: stage {stage.value} -> {nxt.value} is not "
                                   "in the transition table")
                await self._commit(snap, defn, stage, nxt, result, ctx)
            except (asyncio.CancelledError, store.LostTask):
                raise
            except Exception as exc:  # noqa: BLE001 - the step failed: roll back
                await self._begin_rollback(snap, defn, stage, exc)
            return False
        # ROLLING_BACK: every rollback stage moves on, whatever happens.
        try:
            result = await self._run_step(defn, stage, ctx)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - recorded, rollback continues
            if not isinstance(exc, FerryError):
                log.error("task %s: rollback stage %s crashed", snap.id, stage.value,
                          exc_info=exc)
            ctx.note(f"rollback stage {stage.value} failed: {exc}")
            result = StepResult(next=defn.failed())
        nxt = result.next or defn.default_next(stage)
        if not defn.is_allowed(stage, nxt):
            ctx.note(f"bug: rollback {stage.value} -> {nxt.value} not in table; ending")
            nxt = defn.failed()
        if nxt == defn.failed() and result.server_status is None:
            result.server_status = defn.failed_status(ctx)
            result.status_reason = snap.error
        try:
            await self._commit(snap, defn, stage, nxt, result, ctx)
        except (asyncio.CancelledError, store.LostTask):
            raise
        except FerryError as exc:
            # The server status the rollback wanted was refused: end the task anyway.
            ctx.note(f"could not set server status: {exc}")
            await self._commit(snap, defn, stage, defn.failed(), StepResult(), ctx)
        return nxt == defn.failed()

    async def _run_step(self, defn: TaskDefinition, stage, ctx: TaskContext) -> StepResult:
        timeout = defn.stage_timeout(stage)
        try:
            return await asyncio.wait_for(defn.run_stage(stage, ctx), timeout)
        except TimeoutError as exc:
            raise StageTimeout(f"stage {stage.value} did not finish within {timeout:g}s") from exc

    async def _commit(self, snap: TaskSnapshot, defn: TaskDefinition, stage, nxt,
                      result: StepResult, ctx: TaskContext) -> None:
        state = TaskState(snap.state)
        if nxt == defn.done():
            state = TaskState.SUCCEEDED
        elif nxt == defn.failed():
            state = TaskState.FAILED
        data = {**snap.data, **result.data}
        if ctx.notes:
            data["notes"] = [*data.get("notes", []), *ctx.notes]
        apply: Callable[[Session], None] | None = None
        step_apply = result.apply
        if step_apply is not None:
            def apply(session: Session) -> None:
                step_apply(session, ctx)
        await self.deps.db.write(store.commit_step, snap, nxt, state, data,
                                 result.server_status, result.status_reason, apply)
        log.info("task %s (%s): %s -> %s%s", snap.id, snap.kind.value, stage.value, nxt.value,
                 f" [{state.value}]" if state != TaskState(snap.state) else "")
        self.events.publish(snap.id)
        if result.hosts_changed:
            self.deps.host_events.publish(*result.hosts_changed)

    async def _begin_rollback(self, snap: TaskSnapshot, defn: TaskDefinition, stage,
                              exc: BaseException) -> None:
        if isinstance(exc, FerryError):
            message, reason = exc.message, exc.reason
        else:
            log.error("task %s: stage %s raised an unexpected error", snap.id, stage.value,
                      exc_info=exc)
            message, reason = f"{type(exc).__name__}: {exc}", "INTERNAL"
        self._failures[snap.id] = exc
        while len(self._failures) > 1000:
            self._failures.popitem(last=False)
        log.warning("task %s (%s) failed at %s: %s; rolling back", snap.id, snap.kind.value,
                    stage.value, message)
        data = {**snap.data, "failed_stage": stage.value}
        await self.deps.db.write(store.move, snap, defn.rollback_entry(), TaskState.ROLLING_BACK,
                                 data=data, error=message, error_reason=reason)
        snap.stage, snap.state = defn.rollback_entry().value, TaskState.ROLLING_BACK.value
        snap.history.append(snap.stage)
        snap.data, snap.error, snap.error_reason = data, message, reason
        self.events.publish(snap.id)

    # --- waiting ---

    def failure(self, task_id: str) -> BaseException | None:
        """The exception that made a task fail, while this process remembers it."""
        return self._failures.get(task_id)

    async def wait(self, task_id: str, until: Callable[[TaskSnapshot], bool] | None = None, *,
                   timeout: float = 30.0) -> TaskSnapshot:
        """Waits until `until(snapshot)` (default: the task ended); TimeoutError otherwise."""
        cond = until or (lambda s: TaskState(s.state) not in TASK_ACTIVE)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with self.events.subscribe() as sub:
            while True:
                snap = await self.deps.db.read(store.snapshot, task_id)
                if snap is None:
                    raise Internal(f"task {task_id} vanished")
                if cond(snap):
                    return snap
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError(f"task {task_id} still {snap.state}/{snap.stage}")
                await sub.next(timeout=min(remaining, 1.0))

    async def raise_early_failure(self, task_id: str, server_id: str, stages: Iterable[str],
                                  status: str, timeout: float) -> None:
        """Waits until the task has left `stages`; if it failed there, waits for its
        rollback and re-raises that failure (e.g. NO_CAPACITY with the per-host reasons)
        to the caller of the request, naming the server, its status and the task."""
        early = frozenset(stages)
        try:
            snap = await self.wait(task_id, lambda s: s.stage not in early, timeout=timeout)
        except TimeoutError:
            return
        if snap.data.get("failed_stage") not in early:
            return
        try:  # let the rollback finish so the server is in its final status
            await self.wait(task_id, timeout=timeout)
        except TimeoutError:
            pass
        exc = self.failure(task_id)
        if not isinstance(exc, FerryError):
            return
        err = copy.copy(exc)
        err.metadata = {**exc.metadata, "server_id": server_id, "task_id": task_id}
        err.message = f"{exc.message} (server {server_id} is {status}; task {task_id})"
        raise err

    # --- shutdown ---

    async def drain(self, timeout: float | None = None) -> None:
        """Stops accepting, lets running stages finish for `timeout` seconds, then
        cancels the rest (they resume at the next start). Idempotent."""
        self._accepting = False
        if self._drained:
            return
        self._drained = True
        runners = list(self._runners.values())
        if not runners:
            return
        wait_s = self.deps.config.timeouts.drain if timeout is None else timeout
        done, pending = await asyncio.wait(runners, timeout=wait_s)
        for r in pending:
            r.cancel()
        if pending:
            log.info("cancelled %d task runner(s) at shutdown; they resume at next start",
                     len(pending))
            await asyncio.gather(*pending, return_exceptions=True)
