"""SERVER_MIGRATE: cold migration and rescue.

    queued -> schedule -> copy -> switch -> cleanup_source -> [start] -> done
    rollback -> release -> failed

`queued` waits for a slot of a batch (bounded in flight per source and target
host); `schedule` asks the scheduler for a target (rescue kind for a rescue);
`copy` has the target agent pull the local disks from the source agent and
register the guest (a rescue only prepares the guest on the shared disks);
`switch` points the database at the target in one transaction, after the
target copy was verified; `cleanup_source` removes the source copy (never the
shared disks; skipped for a rescue: the old host removes its leftovers when it
comes back); `start` starts the server on the target (always for a rescue).

A failure before `switch` rolls back: the target guest is removed (the verified
part of an interrupted copy stays in the target's work folder so a retry
resumes), the reservation is given back and the server, untouched on its
source, ends in migrate_failed with the reason. A failed `start` leaves the
server on its new host in start_fail.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import ClassVar

from ferry_common.errors import Aborted, NotFound
from ferry_proto.host.v1 import migration_pb2
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ..db.models import Disk, Server, Task, utcnow
from ..db.queries import load_server
from ..migration import cold
from ..migration.placement import select_request
from ..states import TASK_ACTIVE, ServerStatus, TaskKind
from . import cancel
from .base import StageEnum, StepResult, TaskContext, TaskDefinition
from .common import guest_spec, host_address, is_not_found, is_unreachable


class MigrateStage(StageEnum):
    QUEUED = "queued"
    SCHEDULE = "schedule"
    COPY = "copy"
    SWITCH = "switch"
    CLEANUP_SOURCE = "cleanup_source"
    START = "start"
    DONE = "done"
    ROLLBACK = "rollback"
    RELEASE = "release"
    FAILED = "failed"


M = MigrateStage
_ACTIVE_STAGES = (M.SCHEDULE.value, M.COPY.value, M.SWITCH.value)
_schedule_lock = asyncio.Lock()


def _in_flight(session: Session, task_id: str, source: str, limit: int) -> tuple[bool, list[str]]:
    """(may this queued task go on, target hosts already at the limit)."""
    rows = session.execute(select(Task.id, Task.stage, Task.params, Task.data, Task.created_at)
                           .where(Task.kind == TaskKind.SERVER_MIGRATE,
                                  Task.state.in_(TASK_ACTIVE))).all()
    me = next((r for r in rows if r.id == task_id), None)
    per_source, per_target = 0, dict[str, int]()
    queued_before = 0
    for r in rows:
        if r.id == task_id:
            continue
        if r.stage in _ACTIVE_STAGES:
            if (r.params or {}).get("source_host_id") == source:
                per_source += 1
            tgt = (r.data or {}).get("target_host_id")
            if tgt:
                per_target[tgt] = per_target.get(tgt, 0) + 1
        elif (r.stage == M.QUEUED.value and me is not None and r.created_at < me.created_at
              and (r.params or {}).get("source_host_id") == source):
            queued_before += 1
    full = sorted(h for h, n in per_target.items() if n >= limit)
    return per_source + queued_before < limit, full


class ServerMigrateTask(TaskDefinition):
    kind = TaskKind.SERVER_MIGRATE
    Stage = MigrateStage
    FIRST = M.QUEUED
    TRANSITIONS: ClassVar[Mapping[MigrateStage, frozenset[MigrateStage]]] = {
        M.QUEUED: frozenset({M.SCHEDULE, M.ROLLBACK}),
        M.SCHEDULE: frozenset({M.COPY, M.ROLLBACK}),
        M.COPY: frozenset({M.SWITCH, M.ROLLBACK}),
        M.SWITCH: frozenset({M.CLEANUP_SOURCE, M.ROLLBACK}),
        M.CLEANUP_SOURCE: frozenset({M.START, M.DONE, M.ROLLBACK}),
        M.START: frozenset({M.DONE, M.ROLLBACK}),
        M.ROLLBACK: frozenset({M.RELEASE}),
        M.RELEASE: frozenset({M.FAILED}),
    }
    STAGE_TIMEOUTS: ClassVar[Mapping[MigrateStage, float]] = {M.QUEUED: 24 * 3600.0, M.COPY: 6 * 3600.0}

    @staticmethod
    def _check_cancel(ctx: TaskContext) -> None:
        if cancel.requested(ctx):
            cancel.forget(ctx.task.id)
            raise Aborted("migration cancelled by the operator", reason="CANCELLED")

    # --- forward ---

    async def stage_queued(self, ctx: TaskContext) -> StepResult:
        limit = int(ctx.params.get("max_in_flight") or 0)
        self._check_cancel(ctx)
        if limit <= 0:
            return StepResult(next=M.SCHEDULE)
        source = ctx.params.get("source_host_id", "")
        while True:
            self._check_cancel(ctx)
            async with _schedule_lock:
                ok, full = await ctx.deps.db.read(_in_flight, ctx.task.id, source, limit)
                if ok and not (ctx.params.get("prefer_host") in full):
                    return StepResult(next=M.SCHEDULE, data={"exclude_hosts": full})
            await asyncio.sleep(0.5)

    async def stage_schedule(self, ctx: TaskContext) -> StepResult:
        rescue = bool(ctx.params.get("rescue"))
        exclude = list(ctx.data.get("exclude_hosts") or [])

        def build(session: Session):
            server = load_server(session, ctx.server_id)
            if server is None:
                raise NotFound("server", ctx.server_id)
            req = select_request(server, "rescue" if rescue else "migrate",
                                 prefer_host=ctx.params.get("prefer_host", ""),
                                 reservation_ttl=ctx.deps.config.timeouts.reservation_ttl)
            req.exclude_host_ids.extend(h for h in exclude if h not in req.exclude_host_ids)
            return req, server.host_id or ""

        self._check_cancel(ctx)
        req, source = await ctx.deps.db.read(build)
        resp = await ctx.deps.scheduler.select_host(
            req, timeout=ctx.deps.config.timeouts.scheduler_call)
        target = resp.selected.host_id or resp.reservation.host_id
        plans = await ctx.deps.db.read(cold.disk_plans, ctx.server_id, target,
                                       list(resp.selected.storage_ids))
        def reset_progress(session: Session, _ctx: TaskContext) -> None:
            cold.set_progress(session, ctx.server_id, None)  # an earlier operation's is stale

        return StepResult(next=M.COPY, server_status=ServerStatus.MIGRATING,
                          data={"target_host_id": target, "source_host_id": source,
                                "reservation_id": resp.reservation.id,
                                "plans": [p.__dict__ for p in plans]},
                          apply=reset_progress, hosts_changed=(target,))

    async def _spec(self, ctx: TaskContext):
        server = await ctx.server()
        if server is None:
            raise NotFound("server", ctx.server_id)
        spec = await guest_spec(ctx, server)
        by_id = {p["disk_id"]: p for p in ctx.data["plans"]}
        for d in spec.disks:
            d.storage_id = by_id[d.disk_id]["storage_id"]
        return spec

    async def stage_copy(self, ctx: TaskContext) -> StepResult:
        self._check_cancel(ctx)
        data: dict = {}
        rid = ctx.data.get("reservation_id")
        if rid and not ctx.data.get("confirmed"):
            try:
                await ctx.deps.scheduler.confirm(rid,
                                                 timeout=ctx.deps.config.timeouts.scheduler_call)
            except Exception as exc:  # noqa: BLE001 - it lapses; the copy goes on
                ctx.log.warning("confirming reservation %s failed: %s", rid, exc)
            data["confirmed"] = True
        target = await host_address(ctx, ctx.data["target_host_id"])
        spec = await self._spec(ctx)
        if ctx.params.get("rescue"):
            resp = await ctx.deps.agents.prepare_guest(
                target, spec, ctx.deps.region_address,
                timeout=ctx.deps.config.timeouts.prepare_guest)
            data["paths"] = {d.disk_id: d.path for d in resp.guest.disks}
            return StepResult(next=M.SWITCH, data=data)
        source = await host_address(ctx, ctx.data["source_host_id"])
        copies = [migration_pb2.DiskCopy(disk_id=p["disk_id"], storage_id=p["storage_id"])
                  for p in ctx.data["plans"] if not p["shared"]]
        req = migration_pb2.PullDisksRequest(
            spec=spec, source_address=source, disks=copies,
            max_bandwidth_mb=int(ctx.params.get("max_bandwidth_mb") or 0),
            region_address=ctx.deps.region_address)
        throttle = cold.Throttle(1.0)
        last = None
        async for msg in cold.pull_disks(ctx.deps.agents, target, req):
            last = msg
            if msg.done:
                break
            # Leaving the stream cancels the call: the target stops and keeps what it verified.
            self._check_cancel(ctx)
            if throttle.due():
                await ctx.deps.db.write(cold.set_progress, ctx.server_id,
                                        cold.progress_dict(msg.stats, msg.resumed_bytes))
        if last is None or not last.done:
            raise cold.CopyFailed("the target agent ended the copy without an outcome")
        await ctx.deps.db.write(cold.set_progress, ctx.server_id,
                                cold.progress_dict(last.stats, last.resumed_bytes))
        data["resumed_bytes"] = int(last.resumed_bytes)
        data["disk_bytes_total"] = int(last.stats.disk_bytes_total)
        if last.error:
            raise cold.CopyFailed(f"disk copy to {target} failed: {last.error}",
                                  reason=last.error_reason or "COPY_FAILED")
        data["paths"] = {d.disk_id: d.path for d in last.disks}
        return StepResult(next=M.SWITCH, data=data)

    async def stage_switch(self, ctx: TaskContext) -> StepResult:
        self._check_cancel(ctx)  # the last moment: after this the server lives on the target
        target = ctx.data["target_host_id"]
        source = ctx.data.get("source_host_id", "")
        plans = ctx.data["plans"]
        paths = ctx.data.get("paths", {})

        def switch(session: Session, _ctx: TaskContext) -> None:
            session.execute(update(Server).where(Server.id == ctx.server_id,
                                                 Server.task_id == ctx.task.id)
                            .values(host_id=target, updated_at=utcnow()))
            for p in plans:
                session.execute(update(Disk).where(Disk.id == p["disk_id"],
                                                   Disk.server_id == ctx.server_id)
                                .values(storage_id=p["storage_id"],
                                        path=paths.get(p["disk_id"], "")))

        start = bool(ctx.params.get("auto_start") or ctx.params.get("rescue"))
        return StepResult(next=M.CLEANUP_SOURCE,
                          server_status=ServerStatus.STARTING if start else ServerStatus.READY,
                          data={"switched": True}, apply=switch,
                          hosts_changed=tuple(h for h in (source, target) if h))

    async def stage_cleanup_source(self, ctx: TaskContext) -> StepResult:
        source = ctx.data.get("source_host_id")
        if source and not ctx.params.get("rescue"):
            try:
                address = await host_address(ctx, source)
                await ctx.deps.agents.delete_guest(address, ctx.server_id,
                                                   delete_shared_disks=False)
            except Exception as exc:  # noqa: BLE001 - the server lives on the target now
                if not is_not_found(exc):
                    # The source agent removes guests not placed on it when it re-registers.
                    ctx.log.warning("removing the source copy on %s failed: %s", source, exc)
        start = bool(ctx.params.get("auto_start") or ctx.params.get("rescue"))
        return StepResult(next=M.START if start else M.DONE)

    async def stage_start(self, ctx: TaskContext) -> StepResult:
        address = await host_address(ctx, ctx.data["target_host_id"])
        await ctx.deps.agents.start_guest(address, ctx.server_id,
                                          timeout=ctx.deps.config.timeouts.start_guest)
        return StepResult(next=M.DONE, server_status=ServerStatus.RUNNING)

    # --- rollback ---

    async def stage_rollback(self, ctx: TaskContext) -> StepResult:
        target = ctx.data.get("target_host_id")
        if ctx.data.get("switched"):
            if ctx.data.get("failed_stage") == M.START.value and \
                    ctx.task.error_reason != "PEER_UNAVAILABLE" and target:
                try:
                    address = await host_address(ctx, target)
                    await ctx.deps.agents.stop_guest(address, ctx.server_id, force=True)
                except Exception as exc:  # noqa: BLE001 - recorded
                    if not is_not_found(exc):
                        ctx.note(f"force-stopping the guest after a failed start failed: {exc}")
            return StepResult(next=M.RELEASE)
        if target and ctx.data.get("failed_stage") in (M.COPY.value, M.SWITCH.value):
            try:
                address = await host_address(ctx, target)
                await ctx.deps.agents.delete_guest(address, ctx.server_id,
                                                   delete_shared_disks=False)
            except Exception as exc:  # noqa: BLE001 - recorded; the target reconciles later
                if not is_not_found(exc):
                    ctx.note(f"removing the target copy on {target} failed: {exc}"
                             + (" (host unreachable)" if is_unreachable(exc) else ""))
        return StepResult(next=M.RELEASE)

    async def stage_release(self, ctx: TaskContext) -> StepResult:
        rid = ctx.data.get("reservation_id")
        if rid and not ctx.data.get("confirmed"):
            try:
                await ctx.deps.scheduler.release(rid,
                                                 timeout=ctx.deps.config.timeouts.scheduler_call)
            except Exception as exc:  # noqa: BLE001 - it lapses by itself
                if not is_not_found(exc):
                    ctx.note(f"releasing reservation {rid} failed: {exc}")
        hosts = tuple(h for h in (ctx.data.get("target_host_id"),
                                  ctx.data.get("source_host_id")) if h)
        return StepResult(next=M.FAILED, hosts_changed=hosts)

    def failed_status(self, ctx: TaskContext) -> ServerStatus:
        if ctx.data.get("switched"):
            return ServerStatus.START_FAIL
        return ServerStatus.MIGRATE_FAILED


__all__ = ["MigrateStage", "ServerMigrateTask"]
