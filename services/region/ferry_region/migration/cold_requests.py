"""Starting cold migrations, rescues and batches: validate, take the server, launch the task.

Every check that can fail runs in the transaction that takes the server, so a
refused request writes nothing. Like server creation, the call waits for the
placement so that RESOURCE_EXHAUSTED (with the per-host reasons) reaches the
caller directly.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from ferry_common.errors import FailedPrecondition, FerryError, InvalidArgument
from ferry_common.validation import check_ident, check_range
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..db import server_reads as reads
from ..db.models import Host, Server
from ..db.queries import find_host, find_server
from ..db.server_reads import ServerRecord
from ..db.transitions import acquire_server
from ..states import ServerStatus, TaskKind
from ..tasks.cold_migrate import ServerMigrateTask
from ..tasks.engine import TaskEngine
from ..tasks.store import insert_task
from . import cold

MAX_BATCH = 200
DEFAULT_IN_FLIGHT = 2


@dataclass
class MigrateOptions:
    auto_start: bool = False
    rescue: bool = False
    prefer_host: str = ""
    max_bandwidth_mb: int = 0
    max_in_flight: int = 0


@dataclass
class BatchResult:
    server_id: str
    server_name: str
    task_id: str = ""
    error: str = ""
    error_reason: str = ""


def _take(session: Session, ident: str, opts: MigrateOptions, task_id: str) -> str:
    server = find_server(session, ident)
    source = session.get(Host, server.host_id) if server.host_id else None
    cold.check_request(server, source, rescue=opts.rescue)
    prefer = ""
    if opts.prefer_host:
        host = find_host(session, opts.prefer_host)
        if host.id == server.host_id:
            raise FailedPrecondition(f"server {server.name} is already on host {host.name}",
                                     state="same_host", reason="SAME_HOST")
        prefer = host.id
    acquire_server(session, server.id, task_id, ServerStatus.START_MIGRATE)
    insert_task(session, TaskKind.SERVER_MIGRATE, server.id, ServerMigrateTask.FIRST,
                {"auto_start": opts.auto_start, "rescue": opts.rescue, "prefer_host": prefer,
                 "max_bandwidth_mb": opts.max_bandwidth_mb,
                 "max_in_flight": opts.max_in_flight, "source_host_id": server.host_id},
                task_id=task_id)
    return server.id


class ColdMigrations:
    def __init__(self, db, engine: TaskEngine, *, schedule_wait: float = 15.0) -> None:
        self.db = db
        self.engine = engine
        self.schedule_wait = schedule_wait

    async def migrate(self, ident: str, opts: MigrateOptions) -> tuple[ServerRecord, str]:
        check_ident("id", ident)
        if opts.prefer_host:
            check_ident("prefer_host", opts.prefer_host)
        cold.check_bandwidth(opts.max_bandwidth_mb)
        if opts.rescue and opts.max_bandwidth_mb:
            raise InvalidArgument("max_bandwidth_mb", "a rescue moves no data")
        task_id = str(uuid.uuid4())
        server_id = await self.db.write(_take, ident, opts, task_id)
        self.engine.launch(task_id)
        await self.engine.raise_early_failure(task_id, server_id, ("queued", "schedule"),
                                              "migrate_failed", self.schedule_wait)
        return await self.db.query(reads.get_server, server_id), task_id

    async def migrate_many(self, idents: list[str], source_host: str,
                           opts: MigrateOptions) -> list[BatchResult]:
        if idents and source_host:
            raise InvalidArgument("ids", "give either ids or source_host, not both")
        if not idents and not source_host:
            raise InvalidArgument("ids", "give server ids or a source_host")
        if len(idents) > MAX_BATCH:
            raise InvalidArgument("ids", f"at most {MAX_BATCH} servers per batch")
        for i, ident in enumerate(idents):
            check_ident(f"ids[{i}]", ident)
        if source_host:
            check_ident("source_host", source_host)
        if opts.prefer_host:
            check_ident("prefer_host", opts.prefer_host)
        opts.max_in_flight = check_range("max_in_flight_per_host", opts.max_in_flight, 0, 16) \
            or DEFAULT_IN_FLIGHT
        if source_host:
            def servers_on(session: Session) -> list[str]:
                host = find_host(session, source_host)
                return list(session.scalars(select(Server.id).where(
                    Server.host_id == host.id, Server.status == ServerStatus.READY)
                    .order_by(Server.name)).all())
            idents = await self.db.read(servers_on)
        results = []
        for ident in idents:
            task_id = str(uuid.uuid4())
            try:
                server_id = await self.db.write(_take, ident, opts, task_id)
            except FerryError as exc:
                results.append(BatchResult(ident, ident, error=exc.message,
                                           error_reason=exc.reason))
                continue
            self.engine.launch(task_id)
            rec = await self.db.query(reads.get_server, server_id)
            results.append(BatchResult(server_id, rec.row.name, task_id=task_id))
        return results
