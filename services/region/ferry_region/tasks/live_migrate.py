"""SERVER_LIVE_MIGRATE: schedule -> prepare_target -> migrate -> finish_target
-> cleanup_source -> done.

The server is `live_migrating` throughout; its host flips to the target only
in the commit of finish_target, once the guest runs there. Rollback (any
failure or cancel before switch-over): cancel on the source (the agent
resumes the guest there, also a QEMU left mid-migration by a restarted
agent), abort the target (or keep it, stopped, with
keep_dest_guest_on_failed), release the reservation; the server ends
`migrate_failed` with the reason, on its source host.

A region restart resumes `migrate` by asking the source first: a guest in
`postmigrate` there has switched over (go on to finish_target); otherwise the
same MigrateGuest call re-attaches to the agent's running migration, or
fails and rolls back.
"""

from __future__ import annotations

import asyncio
import time

from ferry_common.errors import Aborted, FailedPrecondition, Internal, NotFound
from ferry_proto.host.v1 import migration_pb2 as mpb
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ..db.models import Disk, Host, HostStorage, Server, Storage, utcnow
from ..db.queries import load_server
from ..migration import live
from ..migration.ca import ClusterCA
from ..migration.placement import select_request
from ..states import ServerStatus, StorageKind, TaskKind
from . import cancel
from .base import StageEnum, StepResult, TaskContext, TaskDefinition
from .common import guest_spec, host_address, is_not_found

PROGRESS_EVERY_S = 0.5


class LiveStage(StageEnum):
    SCHEDULE = "schedule"
    PREPARE_TARGET = "prepare_target"
    MIGRATE = "migrate"
    FINISH_TARGET = "finish_target"
    CLEANUP_SOURCE = "cleanup_source"
    DONE = "done"
    ROLLBACK = "rollback"
    RELEASE = "release"
    FAILED = "failed"


L = LiveStage


class LiveMigrationFailed(Internal):
    """The agent reported a failed migration (reason from the agent)."""


def _placement(session: Session, server_id: str, params: dict, ttl: int):
    server = load_server(session, server_id)
    if server is None:
        raise NotFound("server", server_id)
    if not server.host_id:
        raise FailedPrecondition(f"server {server.name} is not placed on a host",
                                 state=server.status.value)
    kinds = dict(session.execute(select(Storage.id, Storage.kind).where(
        Storage.id.in_([d.storage_id for d in server.disks if d.storage_id]))).all())
    shared = [d.id for d in server.disks if kinds.get(d.storage_id) == StorageKind.SHARED]
    req = select_request(server, "live", prefer_host=params.get("prefer_host", ""),
                         skip_cpu_check=bool(params.get("skip_cpu_check")),
                         skip_kernel_check=bool(params.get("skip_kernel_check")),
                         reservation_ttl=ttl)
    return server.host_id, shared, req


def _target_storages(session: Session, server_id: str, host_id: str, shared: list[str],
                     proposed: list[str]) -> dict[str, str]:
    server = load_server(session, server_id)
    assert server is not None
    disks = sorted(server.disks, key=lambda d: d.index)
    local = session.scalars(select(HostStorage.storage_id)
                            .join(Storage, Storage.id == HostStorage.storage_id)
                            .where(HostStorage.host_id == host_id,
                                   Storage.kind == StorageKind.LOCAL)
                            .order_by(HostStorage.storage_id)).first()
    out = {}
    for i, d in enumerate(disks):
        if d.id in shared:
            out[d.id] = d.storage_id or ""
        elif len(proposed) == len(disks) and proposed[i]:
            out[d.id] = proposed[i]
        elif local:
            out[d.id] = local
        else:
            raise FailedPrecondition(f"host {host_id} has no local storage for disk {d.id}",
                                     state="no_storage")
    return out


class ServerLiveMigrateTask(TaskDefinition):
    kind = TaskKind.SERVER_LIVE_MIGRATE
    Stage = LiveStage
    FIRST = L.SCHEDULE
    TRANSITIONS = {
        L.SCHEDULE: frozenset({L.PREPARE_TARGET, L.ROLLBACK}),
        L.PREPARE_TARGET: frozenset({L.MIGRATE, L.ROLLBACK}),
        L.MIGRATE: frozenset({L.FINISH_TARGET, L.ROLLBACK}),
        L.FINISH_TARGET: frozenset({L.CLEANUP_SOURCE, L.ROLLBACK}),
        L.CLEANUP_SOURCE: frozenset({L.DONE, L.ROLLBACK}),
        L.ROLLBACK: frozenset({L.RELEASE}),
        L.RELEASE: frozenset({L.FAILED}),
    }
    def stage_timeout(self, stage):
        if stage is L.MIGRATE:
            return self.deps.config.timeouts.live_migrate + 60
        return super().stage_timeout(stage)

    def _agents(self, ctx: TaskContext) -> live.LiveAgents:
        return live.LiveAgents.of(ctx.deps.agents)

    def _check_cancel(self, ctx: TaskContext) -> None:
        if cancel.requested(ctx):
            raise Aborted("live migration cancelled", reason="CANCELLED")

    # --- forward ---

    async def stage_schedule(self, ctx: TaskContext) -> StepResult:
        t = ctx.deps.config.timeouts
        source, shared, req = await ctx.deps.db.read(_placement, ctx.server_id, ctx.params,
                                                     t.reservation_ttl)
        self._check_cancel(ctx)
        resp = await ctx.deps.scheduler.select_host(req, timeout=t.scheduler_call)
        target = resp.selected.host_id or resp.reservation.host_id
        if not target or target == source:
            raise FailedPrecondition("the scheduler proposed no other host", state="no_host")
        storages = await ctx.deps.db.read(_target_storages, ctx.server_id, target, shared,
                                          list(resp.selected.storage_ids))
        return StepResult(next=L.PREPARE_TARGET, data={
            "source_host_id": source, "target_host_id": target,
            "reservation_id": resp.reservation.id, "target_storages": storages,
            "shared_disk_ids": shared, "started_at": time.time()},
            hosts_changed=(target,))

    async def stage_prepare_target(self, ctx: TaskContext) -> StepResult:
        t = ctx.deps.config.timeouts
        data: dict = {}
        rid = ctx.data.get("reservation_id")
        if rid and not ctx.data.get("confirmed"):
            try:
                await ctx.deps.scheduler.confirm(rid, timeout=t.scheduler_call)
            except Exception as exc:  # noqa: BLE001 - it lapses; usage follows the DB
                ctx.log.warning("confirming reservation %s failed: %s", rid, exc)
            data["confirmed"] = True
        self._check_cancel(ctx)
        server = await ctx.server()
        if server is None:
            raise NotFound("server", ctx.server_id)
        spec = await guest_spec(ctx, server)
        storages = ctx.data["target_storages"]
        for d in spec.disks:
            d.storage_id = storages[d.disk_id]
        address = await host_address(ctx, ctx.data["target_host_id"])
        req = mpb.PrepareIncomingRequest(spec=spec, region_address=ctx.deps.region_address,
                                         shared_disk_ids=ctx.data["shared_disk_ids"])
        if ctx.params.get("enable_tls"):
            req.tls.CopyFrom(await _tls_material(ctx, _ip(address), "server"))
        resp = await self._agents(ctx).call(address, "PrepareIncoming", req, t.prepare_incoming)
        data.update(migration_uri=resp.migration_uri, nbd_address=resp.nbd_address,
                    exports=[[e.disk_id, e.name] for e in resp.exports],
                    target_paths={d.disk_id: d.path for d in resp.disks})
        return StepResult(next=L.MIGRATE, data=data)

    async def stage_migrate(self, ctx: TaskContext) -> StepResult:
        cfg = ctx.deps.config
        agents = self._agents(ctx)
        address = await host_address(ctx, ctx.data["source_host_id"])
        if ctx.resumed:
            try:
                got = await ctx.deps.agents.get_guest(address, ctx.server_id)
                if got.guest.run_state == "postmigrate":
                    ctx.log.info("resumed: the guest already switched over")
                    return StepResult(next=L.FINISH_TARGET, data={"switched_over": True})
            except Exception as exc:  # noqa: BLE001 - the call below decides
                ctx.log.warning("resumed: cannot ask the source: %s", exc)
        self._check_cancel(ctx)
        p = ctx.params
        req = mpb.MigrateGuestRequest(
            guest_id=ctx.server_id, migration_uri=ctx.data["migration_uri"],
            nbd_address=ctx.data["nbd_address"],
            exports=[mpb.NbdExport(disk_id=d, name=n) for d, n in ctx.data["exports"]],
            max_bandwidth_mb=int(p.get("max_bandwidth_mb", 0)),
            downtime_limit_ms=int(p.get("downtime_limit_ms", 0)) or 300,
            quickly_finish=bool(p.get("quickly_finish")),
            downtime_cap_ms=cfg.live_downtime_cap_ms,
            stall_timeout_seconds=cfg.live_stall_timeout_s)
        if p.get("enable_tls"):
            target = await host_address(ctx, ctx.data["target_host_id"])
            req.tls.CopyFrom(await _tls_material(ctx, _ip(address), "client", _ip(target)))
        last_write = 0.0
        final = None
        async for msg in agents.migrate(address, req, cfg.timeouts.live_migrate):
            now = time.monotonic()
            if msg.done or now - last_write >= PROGRESS_EVERY_S:
                await ctx.deps.db.write(live.store_progress, ctx.server_id, ctx.task.id,
                                        live.progress_dict(msg.stats))
                last_write = now
            if msg.done:
                final = msg
                break
        if final is None:
            raise LiveMigrationFailed("the source agent ended the migration stream early",
                                      reason="STREAM_LOST")
        if final.error:
            raise LiveMigrationFailed(final.error, reason=final.error_reason or "MIGRATION_FAILED")
        return StepResult(next=L.FINISH_TARGET,
                          data={"switched_over": True, "downtime_ms": final.downtime_ms})

    async def stage_finish_target(self, ctx: TaskContext) -> StepResult:
        t = ctx.deps.config.timeouts
        target = ctx.data["target_host_id"]
        address = await host_address(ctx, target)
        resp = await self._agents(ctx).call(address, "FinishIncoming",
                                            mpb.FinishIncomingRequest(guest_id=ctx.server_id),
                                            t.agent_call + 30)
        paths = {d.disk_id: d.path for d in resp.guest.disks}
        storages = ctx.data["target_storages"]
        status = ServerStatus.SUSPENDED if ctx.params.get("was_suspended") else ServerStatus.RUNNING
        return StepResult(next=L.CLEANUP_SOURCE, server_status=status,
                          apply=_flip(ctx.server_id, target, storages, paths),
                          hosts_changed=(target, ctx.data["source_host_id"]))

    async def stage_cleanup_source(self, ctx: TaskContext) -> StepResult:
        try:
            address = await host_address(ctx, ctx.data["source_host_id"])
            await self._agents(ctx).call(address, "CleanupSource",
                                         mpb.CleanupSourceRequest(guest_id=ctx.server_id),
                                         ctx.deps.config.timeouts.agent_call + 15)
        except Exception as exc:  # noqa: BLE001 - the guest runs on the target: done anyway
            ctx.note(f"cleaning up the source failed: {exc}")
        total_ms = int((time.time() - ctx.data.get("started_at", time.time())) * 1000)
        cancel.forget(ctx.task.id)
        return StepResult(next=L.DONE, data={"total_ms": total_ms})

    # --- rollback ---

    async def stage_rollback(self, ctx: TaskContext) -> StepResult:
        failed = ctx.data.get("failed_stage")
        agents = self._agents(ctx)
        t = ctx.deps.config.timeouts
        data: dict = {}
        if not ctx.data.get("switched_over") and failed == L.MIGRATE.value:
            # The stream may have broken right at the end: ask where the guest runs.
            try:
                address = await host_address(ctx, ctx.data["source_host_id"])
                got = await ctx.deps.agents.get_guest(address, ctx.server_id)
                if got.guest.run_state == "postmigrate":
                    data["switched_over"] = True
            except Exception as exc:  # noqa: BLE001 - treated as not switched over
                ctx.log.warning("asking the source after a failed migrate: %s", exc)
        if ctx.data.get("switched_over") or data.get("switched_over"):
            ctx.note("the guest had switched over to the target; it stays there")
            for host, method, req in (
                    (ctx.data.get("target_host_id"), "FinishIncoming",
                     mpb.FinishIncomingRequest(guest_id=ctx.server_id)),
                    (ctx.data.get("source_host_id"), "CleanupSource",
                     mpb.CleanupSourceRequest(guest_id=ctx.server_id))):
                try:
                    address = await host_address(ctx, host)
                    await agents.call(address, method, req, t.agent_call + 30)
                except Exception as exc:  # noqa: BLE001 - recorded
                    ctx.note(f"{method} after switch-over failed: {exc}")
            return StepResult(next=L.RELEASE, data=data)
        if failed in (L.PREPARE_TARGET.value, L.MIGRATE.value, L.FINISH_TARGET.value):
            source = ctx.data.get("source_host_id")
            if source and failed != L.PREPARE_TARGET.value:
                try:
                    address = await host_address(ctx, source)
                    await agents.call(address, "CancelMigration",
                                      mpb.CancelMigrationRequest(guest_id=ctx.server_id),
                                      t.agent_call + 30)
                except Exception as exc:  # noqa: BLE001 - recorded
                    ctx.note(f"cancelling on the source failed: {exc}")
            target = ctx.data.get("target_host_id")
            if target:
                keep = bool(ctx.params.get("keep_dest_guest_on_failed"))
                try:
                    address = await host_address(ctx, target)
                    await agents.call(address, "AbortIncoming", mpb.AbortIncomingRequest(
                        guest_id=ctx.server_id, keep_guest=keep), t.agent_call + 15)
                    data["target_kept" if keep else "target_removed"] = True
                except Exception as exc:  # noqa: BLE001 - the next PrepareIncoming replaces it
                    if not is_not_found(exc):
                        ctx.note(f"cleaning up the target failed: {exc}")
        return StepResult(next=L.RELEASE, data=data)

    async def stage_release(self, ctx: TaskContext) -> StepResult:
        rid = ctx.data.get("reservation_id")
        if rid and not ctx.data.get("confirmed"):
            try:
                await ctx.deps.scheduler.release(
                    rid, timeout=ctx.deps.config.timeouts.scheduler_call)
            except Exception as exc:  # noqa: BLE001 - it lapses by itself
                if not is_not_found(exc):
                    ctx.note(f"releasing reservation {rid} failed: {exc}")
        cancel.forget(ctx.task.id)
        target = ctx.data.get("target_host_id")
        if ctx.data.get("switched_over") and target:
            return StepResult(next=L.FAILED, apply=_flip(
                ctx.server_id, target, ctx.data["target_storages"], ctx.data.get(
                    "target_paths", {})), hosts_changed=(target,))
        if ctx.data.get("target_kept"):
            # Shown as such; the next PrepareIncoming on that host replaces it.
            return StepResult(next=L.FAILED, server_status=ServerStatus.MIGRATE_FAILED,
                              status_reason=f"{ctx.task.error} (failed target guest kept, "
                                            f"stopped, on host {target} for debugging)",
                              hosts_changed=(target,) if target else ())
        return StepResult(next=L.FAILED, hosts_changed=(target,) if target else ())

    def failed_status(self, ctx: TaskContext) -> ServerStatus:
        if ctx.data.get("switched_over"):  # it runs, on the target (host flipped in release)
            return ServerStatus.SUSPENDED if ctx.params.get("was_suspended") \
                else ServerStatus.RUNNING
        return ServerStatus.MIGRATE_FAILED


def _ip(address: str) -> str:
    return address.rsplit(":", 1)[0].strip("[]")


async def _tls_material(ctx: TaskContext, ip: str, purpose: str,
                        peer: str = "") -> mpb.TlsMaterial:
    """A fresh leaf for one end, issued by the cluster CA (whose key stays here)."""
    ca = ClusterCA.at(ctx.deps.config.data_dir / "ca")
    leaf = await asyncio.to_thread(ca.issue, ip, purpose)
    return mpb.TlsMaterial(ca_cert_pem=leaf.ca_cert_pem, cert_pem=leaf.cert_pem,
                           key_pem=leaf.key_pem, peer_hostname=peer)


def _flip(server_id: str, target: str, storages: dict, paths: dict):
    def apply(session: Session, _ctx: TaskContext) -> None:
        if session.get(Host, target) is None:
            raise NotFound("host", target)
        session.execute(update(Server).where(Server.id == server_id)
                        .values(host_id=target, updated_at=utcnow()))
        for disk_id, storage_id in storages.items():
            values = {"storage_id": storage_id}
            if paths.get(disk_id):
                values["path"] = paths[disk_id]
            session.execute(update(Disk).where(Disk.id == disk_id, Disk.server_id == server_id)
                            .values(**values))
    return apply
