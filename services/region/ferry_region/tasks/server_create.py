"""SERVER_CREATE: schedule -> prepare_disks -> [start] -> done.

Rollback: delete the guest from its host (prepare_disks failed), or stop it
(start failed); then give the reservation/placement back; the server ends in
sched_fail, create_fail or start_fail with the reason.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ferry_common.errors import FailedPrecondition, NotFound
from ferry_proto.scheduler.v1 import scheduler_pb2

from ..db.models import Disk, Host, HostStorage, Server, Storage, utcnow
from ..db.transitions import transition_server
from ..states import ServerStatus, StorageKind, TaskKind
from .base import StageEnum, StepResult, TaskContext, TaskDefinition
from .common import guest_spec, host_address, is_not_found, is_unreachable


class CreateStage(StageEnum):
    SCHEDULE = "schedule"
    PREPARE_DISKS = "prepare_disks"
    START = "start"
    DONE = "done"
    ROLLBACK = "rollback"
    RELEASE = "release"
    FAILED = "failed"


C = CreateStage


def _storage_kinds(session: Session, ids: list[str]) -> dict[str, StorageKind]:
    if not ids:
        return {}
    return dict(session.execute(select(Storage.id, Storage.kind).where(Storage.id.in_(ids))).all())


def _choose_storages(session: Session, host_id: str, requests: list[str],
                     proposed: list[str]) -> list[str]:
    """Storage per disk: the scheduler's choice, else the host's first matching storage."""
    if len(proposed) == len(requests) and all(proposed):
        return proposed
    rows = session.execute(select(HostStorage.storage_id, Storage.kind)
                           .join(Storage, Storage.id == HostStorage.storage_id)
                           .where(HostStorage.host_id == host_id)
                           .order_by(HostStorage.storage_id)).all()
    out = []
    for i, req in enumerate(requests):
        if req in ("local", "shared"):
            kind = StorageKind(req)
            match = next((sid for sid, k in rows if k == kind), None)
        else:
            match = req if any(sid == req for sid, _ in rows) else None
        if match is None:
            raise FailedPrecondition(f"host {host_id} has no storage for disk {i} ({req})",
                                     state="no_storage")
        out.append(match)
    return out


class ServerCreateTask(TaskDefinition):
    kind = TaskKind.SERVER_CREATE
    Stage = CreateStage
    FIRST = C.SCHEDULE
    TRANSITIONS = {
        C.SCHEDULE: frozenset({C.PREPARE_DISKS, C.ROLLBACK}),
        C.PREPARE_DISKS: frozenset({C.START, C.DONE, C.ROLLBACK}),
        C.START: frozenset({C.DONE, C.ROLLBACK}),
        C.ROLLBACK: frozenset({C.RELEASE}),
        C.RELEASE: frozenset({C.FAILED}),
    }

    # --- forward ---

    async def stage_schedule(self, ctx: TaskContext) -> StepResult:
        await ctx.deps.db.write(transition_server, ctx.server_id, ServerStatus.SCHEDULING,
                                task_id=ctx.task.id)
        server = await ctx.server()
        if server is None:
            raise NotFound("server", ctx.server_id)
        requests = [d.storage_request for d in server.disks]
        kinds = await ctx.deps.db.read(_storage_kinds,
                                       [r for r in requests if r not in ("local", "shared")])
        disks = []
        for d in server.disks:
            explicit = d.storage_request not in ("local", "shared")
            shared = (d.storage_request == "shared"
                      or (explicit and kinds.get(d.storage_request) == StorageKind.SHARED))
            disks.append(scheduler_pb2.DiskRequirement(
                size_mb=d.size_mb, shared=shared, storage_id=d.storage_request if explicit else ""))
        req = scheduler_pb2.SelectHostRequest(
            requirements=scheduler_pb2.ServerRequirements(
                server_id=server.id, vcpu_count=server.vcpu_count, memory_mb=server.memory_mb,
                disks=disks, networks=[n.network for n in server.nics]),
            kind=scheduler_pb2.PLACEMENT_KIND_CREATE,
            prefer_host=ctx.params.get("prefer_host", ""),
            reservation_ttl_seconds=ctx.deps.config.timeouts.reservation_ttl)
        resp = await ctx.deps.scheduler.select_host(
            req, timeout=ctx.deps.config.timeouts.scheduler_call)
        host_id = resp.selected.host_id or resp.reservation.host_id
        storages = await ctx.deps.db.read(_choose_storages, host_id, requests,
                                          list(resp.selected.storage_ids))

        def place(session: Session, _ctx: TaskContext) -> None:
            if session.get(Host, host_id) is None:
                raise NotFound("host", host_id)
            session.execute(update(Server).where(Server.id == ctx.server_id)
                            .values(host_id=host_id, updated_at=utcnow()))
            for d, sid in zip(server.disks, storages, strict=True):
                session.execute(update(Disk).where(Disk.id == d.id).values(storage_id=sid))

        return StepResult(next=C.PREPARE_DISKS, server_status=ServerStatus.CREATING,
                          data={"host_id": host_id, "reservation_id": resp.reservation.id,
                                "storage_ids": storages},
                          apply=place, hosts_changed=(host_id,))

    async def stage_prepare_disks(self, ctx: TaskContext) -> StepResult:
        data = {}
        rid = ctx.data.get("reservation_id")
        if rid and not ctx.data.get("confirmed"):
            try:
                await ctx.deps.scheduler.confirm(rid,
                                                 timeout=ctx.deps.config.timeouts.scheduler_call)
            except Exception as exc:  # noqa: BLE001 - the placement is already in our usage
                ctx.log.warning("confirming reservation %s failed: %s", rid, exc)
            data["confirmed"] = True
        server = await ctx.server()
        if server is None:
            raise NotFound("server", ctx.server_id)
        address = await host_address(ctx, ctx.data["host_id"])
        spec = await guest_spec(ctx, server)
        resp = await ctx.deps.agents.prepare_guest(
            address, spec, ctx.deps.region_address,
            timeout=ctx.deps.config.timeouts.prepare_guest)
        paths = {d.disk_id: d.path for d in resp.guest.disks}

        def record(session: Session, _ctx: TaskContext) -> None:
            for disk_id, path in paths.items():
                session.execute(update(Disk).where(Disk.id == disk_id,
                                                   Disk.server_id == ctx.server_id)
                                .values(path=path))

        if ctx.params.get("auto_start"):
            return StepResult(next=C.START, server_status=ServerStatus.STARTING, data=data,
                              apply=record)
        return StepResult(next=C.DONE, server_status=ServerStatus.READY, data=data, apply=record)

    async def stage_start(self, ctx: TaskContext) -> StepResult:
        address = await host_address(ctx, ctx.data["host_id"])
        await ctx.deps.agents.start_guest(address, ctx.server_id,
                                          timeout=ctx.deps.config.timeouts.start_guest)
        return StepResult(next=C.DONE, server_status=ServerStatus.RUNNING)

    # --- rollback ---

    async def stage_rollback(self, ctx: TaskContext) -> StepResult:
        failed = ctx.data.get("failed_stage")
        host_id = ctx.data.get("host_id")
        data: dict = {}
        if host_id and failed in (C.PREPARE_DISKS.value, C.START.value):
            try:
                address = await host_address(ctx, host_id)
                if failed == C.START.value:
                    if ctx.task.error_reason != "PEER_UNAVAILABLE":
                        await ctx.deps.agents.stop_guest(address, ctx.server_id, force=True)
                else:
                    await ctx.deps.agents.delete_guest(address, ctx.server_id,
                                                       delete_shared_disks=True)
                    data["guest_deleted"] = True
            except Exception as exc:  # noqa: BLE001 - recorded; the reconciler cleans up
                if is_not_found(exc) and failed != C.START.value:
                    data["guest_deleted"] = True
                else:
                    ctx.note(f"cleanup on host {host_id} failed: {exc}"
                             + (" (host unreachable)" if is_unreachable(exc) else ""))
        return StepResult(next=C.RELEASE, data=data)

    async def stage_release(self, ctx: TaskContext) -> StepResult:
        failed = ctx.data.get("failed_stage")
        rid = ctx.data.get("reservation_id")
        if rid and not ctx.data.get("confirmed"):
            try:
                await ctx.deps.scheduler.release(rid,
                                                 timeout=ctx.deps.config.timeouts.scheduler_call)
            except Exception as exc:  # noqa: BLE001 - it lapses by itself
                if not is_not_found(exc):
                    ctx.note(f"releasing reservation {rid} failed: {exc}")
        host_id = ctx.data.get("host_id")
        if host_id and failed == C.PREPARE_DISKS.value and ctx.data.get("guest_deleted"):
            def unplace(session: Session, _ctx: TaskContext) -> None:
                session.execute(update(Server).where(Server.id == ctx.server_id)
                                .values(host_id=None, updated_at=utcnow()))
                session.execute(update(Disk).where(Disk.server_id == ctx.server_id)
                                .values(storage_id=None, path=""))
            return StepResult(next=C.FAILED, apply=unplace, hosts_changed=(host_id,),
                              server_status=self.failed_status(ctx),
                              status_reason=ctx.task.error)
        return StepResult(next=C.FAILED)

    def failed_status(self, ctx: TaskContext) -> ServerStatus:
        failed = ctx.data.get("failed_stage")
        if failed == C.START.value:
            return ServerStatus.START_FAIL
        if failed == C.PREPARE_DISKS.value:
            return ServerStatus.CREATE_FAIL
        return ServerStatus.SCHED_FAIL
