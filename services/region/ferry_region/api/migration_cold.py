"""MigrationService RPCs for cold migration, rescue and batches (issue 5)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ferry_common.errors import FailedPrecondition
from ferry_common.validation import check_ident, check_range
from ferry_proto.host.v1 import migration_pb2 as mpb
from ferry_proto.region.v1 import migration_service_pb2 as pb
from sqlalchemy import update
from sqlalchemy.orm import Session

from ..db import server_reads as reads
from ..db.models import Host, Task
from ..db.queries import running_task
from ..migration import cold, live
from ..migration.cold_requests import ColdMigrations, MigrateOptions
from ..states import TaskKind
from ..tasks import cancel
from . import convert
from .migration_live import MAX_BANDWIDTH_MB

if TYPE_CHECKING:
    from .migration_service import MigrationParts


def _cold_task(session: Session, ident: str) -> tuple[str, str, str]:
    """(server id, task id, stage) of the server's running cold migration or rescue."""
    server, task = running_task(session, ident, TaskKind.SERVER_MIGRATE, "being migrated cold")
    return server.id, task.id, task.stage


def _set_bandwidth(session: Session, ident: str, mb: int) -> tuple[str, str, str]:
    """Records the new cap in the copying task (a resumed copy uses it); returns (server id,
    task id, target agent address)."""
    server_id, task_id, stage = _cold_task(session, ident)
    if stage != "copy":
        raise FailedPrecondition(f"the migration is at stage {stage}, not copying disks",
                                 state=stage)
    task = session.get(Task, task_id)
    assert task is not None
    target = session.get(Host, (task.data or {}).get("target_host_id", ""))
    session.execute(update(Task).where(Task.id == task_id)
                    .values(params={**(task.params or {}), "max_bandwidth_mb": mb}))
    return server_id, task_id, target.access_address if target else ""


class ColdMigrationApi:
    """MigrateServer, MigrateServers, CancelMigrate, SetMigrateParams."""

    parts: MigrationParts

    @property
    def _cold(self) -> ColdMigrations:
        cm = self.__dict__.get("_cold_migrations")
        if cm is None:
            cm = ColdMigrations(self.parts.servers.db, self.parts.engine,
                                schedule_wait=self.parts.servers.schedule_wait)
            self.__dict__["_cold_migrations"] = cm
        return cm

    async def MigrateServer(self, request: pb.MigrateServerRequest, context) -> pb.MigrateServerResponse:
        opts = MigrateOptions(auto_start=request.auto_start, rescue=request.rescue_mode,
                              prefer_host=request.prefer_host,
                              max_bandwidth_mb=request.max_bandwidth_mb)
        server, task_id = await self._cold.migrate(request.id, opts)
        return pb.MigrateServerResponse(server=convert.server_record(server), task_id=task_id)

    async def MigrateServers(self, request: pb.MigrateServersRequest,
                             context) -> pb.MigrateServersResponse:
        opts = MigrateOptions(auto_start=request.auto_start, prefer_host=request.prefer_host,
                              max_in_flight=request.max_in_flight_per_host)
        results = await self._cold.migrate_many(list(request.ids), request.source_host, opts)
        return pb.MigrateServersResponse(results=[
            pb.MigrateServerResult(server_id=r.server_id, server_name=r.server_name,
                                   task_id=r.task_id, error=r.error, error_reason=r.error_reason)
            for r in results])

    async def CancelMigrate(self, request: pb.CancelMigrateRequest,
                            context) -> pb.CancelMigrateResponse:
        check_ident("id", request.id)
        db = self.parts.servers.db
        server_id, task_id, _ = await db.read(_cold_task, request.id)
        # Flag first, then look at the stage: a task that already passed its last check
        # has written a later stage, which this read then sees.
        await cancel.request(db, task_id)
        try:
            _, now_task, stage = await db.read(_cold_task, request.id)
        except FailedPrecondition:
            cancel.forget(task_id)  # it just ended
            raise
        if now_task != task_id or stage not in cold.CANCELLABLE_STAGES:
            await cancel.withdraw(db, task_id)
            raise FailedPrecondition(
                f"the migration is at stage {stage}: the server already points at its target "
                "host and the migration completes there", state=stage)
        record = await db.query(reads.get_server, server_id)
        return pb.CancelMigrateResponse(server=convert.server_record(record), task_id=task_id)

    async def SetMigrateParams(self, request: pb.SetMigrateParamsRequest,
                               context) -> pb.SetMigrateParamsResponse:
        check_ident("id", request.id)
        mb = check_range("max_bandwidth_mb", request.max_bandwidth_mb, 0, MAX_BANDWIDTH_MB)
        db = self.parts.servers.db
        server_id, task_id, address = await db.write(_set_bandwidth, request.id, mb)
        if not address:
            raise FailedPrecondition("the migration's target host is unknown", state="copy")
        agents = live.LiveAgents.of(self.parts.deps.agents)
        await agents.call(address, "SetPullBandwidth",
                          mpb.SetPullBandwidthRequest(guest_id=server_id, max_bandwidth_mb=mb),
                          self.parts.deps.config.timeouts.agent_call)
        record = await db.query(reads.get_server, server_id)
        return pb.SetMigrateParamsResponse(server=convert.server_record(record), task_id=task_id)
