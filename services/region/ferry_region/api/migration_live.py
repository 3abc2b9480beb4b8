"""MigrationService RPCs for live migration and progress (issue 4)."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from ferry_common.errors import FailedPrecondition
from ferry_common.validation import check_ident, check_range
from ferry_proto.host.v1 import migration_pb2 as mpb
from ferry_proto.region.v1 import migration_service_pb2 as pb
from sqlalchemy.orm import Session

from ..db import server_reads as reads
from ..db.models import Host
from ..db.queries import find_host, find_server, running_task
from ..db.transitions import acquire_server
from ..migration import live
from ..states import ServerStatus, TaskKind, TaskState
from ..tasks import cancel
from ..tasks.live_migrate import ServerLiveMigrateTask
from ..tasks.store import insert_task, snapshot
from . import convert

log = logging.getLogger(__name__)

MAX_BANDWIDTH_MB = 1_000_000
MAX_DOWNTIME_MS = 600_000
WATCH_POLL_S = 0.5


def _live_task(session: Session, ident: str) -> tuple[str, str, str]:
    """(server id, task id, source agent address) of a running live migration."""
    server, task = running_task(session, ident, TaskKind.SERVER_LIVE_MIGRATE, "live migrating")
    source = (task.data or {}).get("source_host_id") or server.host_id
    host = session.get(Host, source) if source else None
    return server.id, task.id, host.access_address if host else ""


class LiveMigrationApi:
    """LiveMigrateServer, CancelLiveMigrate, SetLiveMigrateParams, WatchServerProgress."""

    parts: Any

    async def LiveMigrateServer(self, request, context):
        check_ident("id", request.id)
        if request.prefer_host:
            check_ident("prefer_host", request.prefer_host)
        check_range("max_bandwidth_mb", request.max_bandwidth_mb, 0, MAX_BANDWIDTH_MB)
        check_range("downtime_limit_ms", request.downtime_limit_ms, 0, MAX_DOWNTIME_MS)
        task_id = str(uuid.uuid4())
        db = self.parts.servers.db

        def tx(session: Session) -> str:
            server = find_server(session, request.id, full=False)
            prefer = find_host(session, request.prefer_host).id if request.prefer_host else ""
            if server.task_id is None and server.status not in (
                    ServerStatus.RUNNING, ServerStatus.SUSPENDED, ServerStatus.MIGRATE_FAILED):
                raise FailedPrecondition(
                    f"server {server.name} is {server.status.value}; only a running or "
                    "suspended server can be live-migrated", state=server.status.value)
            if prefer and prefer == server.host_id:
                raise FailedPrecondition(f"server {server.name} already runs on host "
                                         f"{request.prefer_host}", state=server.status.value)
            was_suspended = server.status == ServerStatus.SUSPENDED
            acquire_server(session, server.id, task_id, ServerStatus.LIVE_MIGRATING)
            params = {"prefer_host": prefer, "skip_cpu_check": request.skip_cpu_check,
                      "skip_kernel_check": request.skip_kernel_check,
                      "quickly_finish": request.quickly_finish,
                      "max_bandwidth_mb": request.max_bandwidth_mb,
                      "downtime_limit_ms": request.downtime_limit_ms,
                      "keep_dest_guest_on_failed": request.keep_dest_guest_on_failed,
                      "enable_tls": request.enable_tls,
                      "was_suspended": was_suspended}
            insert_task(session, TaskKind.SERVER_LIVE_MIGRATE, server.id,
                        ServerLiveMigrateTask.FIRST, params, task_id=task_id)
            return server.id

        server_id = await db.write(tx)
        self.parts.engine.launch(task_id)
        record = await db.query(reads.get_server, server_id)
        return pb.LiveMigrateServerResponse(server=convert.server_record(record), task_id=task_id)

    async def CancelLiveMigrate(self, request, context):
        check_ident("id", request.id)
        db = self.parts.servers.db
        server_id, task_id, address = await db.read(_live_task, request.id)
        await cancel.request(db, task_id)
        if address:
            agents = live.LiveAgents.of(self.parts.deps.agents)
            try:
                await agents.call(address, "CancelMigration",
                                  mpb.CancelMigrationRequest(guest_id=server_id),
                                  self.parts.deps.config.timeouts.agent_call + 30)
            except Exception as exc:  # noqa: BLE001 - the task rolls back on the flag anyway
                log.warning("cancel of server %s on %s: %s", server_id, address, exc)
        record = await db.query(reads.get_server, server_id)
        return pb.CancelLiveMigrateResponse(server=convert.server_record(record), task_id=task_id)

    async def SetLiveMigrateParams(self, request, context):
        check_ident("id", request.id)
        req = mpb.SetMigrationParamsRequest()
        if request.HasField("max_bandwidth_mb"):
            req.max_bandwidth_mb = check_range("max_bandwidth_mb", request.max_bandwidth_mb, 0,
                                               MAX_BANDWIDTH_MB)
        if request.HasField("downtime_limit_ms"):
            req.downtime_limit_ms = check_range("downtime_limit_ms", request.downtime_limit_ms,
                                                1, MAX_DOWNTIME_MS)
        db = self.parts.servers.db
        server_id, _task_id, address = await db.read(_live_task, request.id)
        req.guest_id = server_id
        agents = live.LiveAgents.of(self.parts.deps.agents)
        await agents.call(address, "SetMigrationParams", req,
                          self.parts.deps.config.timeouts.agent_call)
        record = await db.query(reads.get_server, server_id)
        return pb.SetLiveMigrateParamsResponse(server=convert.server_record(record))

    async def WatchServerProgress(self, request, context):
        check_ident("id", request.id)
        db = self.parts.servers.db
        engine = self.parts.engine
        record = await db.query(reads.get_server, request.id)
        server_id = record.row.id
        task_id = record.row.task_id or ""
        last = None
        async with engine.events.subscribe() as sub:
            try:
                while True:
                    record = await db.query(reads.get_server, server_id)
                    msg = convert.server_record(record)
                    current = record.row.task_id or ""
                    task_id = task_id or current
                    done = not current
                    out = pb.WatchServerProgressResponse(server=msg, task_id=current, done=done)
                    if done and task_id:
                        snap = await db.read(snapshot, task_id)
                        if snap is not None and snap.state == TaskState.SUCCEEDED.value:
                            out.downtime_ms = int(snap.data.get("downtime_ms", 0))
                            out.total_ms = int(snap.data.get("total_ms", 0))
                    key = out.SerializeToString(deterministic=True)
                    if key != last:
                        last = key
                        yield out
                    if done:
                        return
                    try:
                        await sub.next(timeout=WATCH_POLL_S)
                    except TimeoutError:
                        pass
            finally:
                pass  # the subscription ends with the `async with` when the client goes
