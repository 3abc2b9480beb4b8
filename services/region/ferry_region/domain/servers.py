"""Servers: create/start/stop/delete as tasks, get, list with paging, serial logs.

Every mutating call validates first (INVALID_ARGUMENT naming the field,
NOT_FOUND, ALREADY_EXISTS; nothing written), then takes the server for its
task in one transaction (ABORTED when another task holds it,
FAILED_PRECONDITION naming the status), then hands the task to the engine.
"""

from __future__ import annotations

import contextlib
import secrets
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from sqlalchemy import Connection, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ferry_common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from ferry_common.validation import MAX_ID_LEN, check_ident, check_name, check_range

from ..clients.host_agent import AgentClients
from ..db import server_reads as reads
from ..db.engine import Database, is_unique_violation
from ..db.models import Disk, Host, Network, Server, ServerNetwork, Storage, utcnow
from ..db.queries import find_host, find_image, find_server
from ..db.server_reads import ServerRecord
from ..db.transitions import acquire_server
from ..states import ImageStatus, ServerStatus, TaskKind
from ..tasks import ServerCreateTask, TaskEngine
from ..tasks.store import insert_task
from . import paging

MAX_VCPU = 64
MIN_MEMORY_MB, MAX_MEMORY_MB = 16, 1_048_576
MAX_DISK_MB = 16 * 1024 * 1024
MAX_DATA_DISKS = 16
MAX_NICS = 8
DEFAULT_PAGE, MAX_PAGE = 100, 1000
DEFAULT_PROJECT = "default"


@dataclass
class DiskRequest:
    size_mb: int = 0
    storage: str = ""


@dataclass
class CreateServerSpec:
    name: str
    image: str
    vcpu_count: int
    memory_mb: int
    system_disk: DiskRequest = field(default_factory=DiskRequest)
    data_disks: list[DiskRequest] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    prefer_host: str = ""
    auto_start: bool = False
    project: str = ""


@dataclass
class ListServersQuery:
    search: str = ""
    details: bool = False
    system_scope: bool = False
    project: str = ""
    host: str = ""
    status: ServerStatus | None = None
    page_size: int = 0
    page_token: str = ""


@dataclass
class ServerPage:
    servers: list[ServerRecord]
    next_page_token: str
    total_size: int


def _check_storage(field_name: str, value: str) -> str:
    if not value:
        return "local"
    if len(value) > MAX_ID_LEN or not value.isprintable():
        raise InvalidArgument(field_name, f"must be 'local', 'shared' or a storage id of at most "
                                          f"{MAX_ID_LEN} printable characters")
    return value


def _check_disk(prefix: str, d: DiskRequest, *, system: bool) -> None:
    low = 0 if system else 1
    check_range(f"{prefix}.size_mb", d.size_mb, low, MAX_DISK_MB)
    _check_storage(f"{prefix}.storage", d.storage)


def validate_create(spec: CreateServerSpec) -> None:
    """Field checks that need no database (each failure names its field)."""
    check_name("name", spec.name)
    check_ident("image", spec.image)
    check_range("vcpu_count", spec.vcpu_count, 1, MAX_VCPU)
    check_range("memory_mb", spec.memory_mb, MIN_MEMORY_MB, MAX_MEMORY_MB)
    _check_disk("system_disk", spec.system_disk, system=True)
    if len(spec.data_disks) > MAX_DATA_DISKS:
        raise InvalidArgument("data_disks", f"at most {MAX_DATA_DISKS} data disks")
    for i, d in enumerate(spec.data_disks):
        _check_disk(f"data_disks[{i}]", d, system=False)
    if len(spec.networks) > MAX_NICS:
        raise InvalidArgument("networks", f"at most {MAX_NICS} networks")
    for i, n in enumerate(spec.networks):
        check_name(f"networks[{i}]", n)
    if spec.prefer_host:
        check_ident("prefer_host", spec.prefer_host)
    if spec.project:
        check_name("project", spec.project)


def _random_mac() -> str:
    b = secrets.token_bytes(4)
    return "52:54:" + ":".join(f"{x:02x}" for x in b)


def _unused_macs(session: Session, n: int) -> list[str]:
    while True:
        macs = list({_random_mac() for _ in range(n)})
        if len(macs) < n:
            continue
        taken = set(session.scalars(select(ServerNetwork.mac)
                                    .where(ServerNetwork.mac.in_(macs))).all())
        if not taken:
            return macs


class ServerManager:
    def __init__(self, db: Database, engine: TaskEngine, agents: AgentClients, *,
                 schedule_wait: float = 15.0) -> None:
        self.db = db
        self.engine = engine
        self.agents = agents
        self.schedule_wait = schedule_wait

    # --- reads ---

    async def get(self, ident: str) -> ServerRecord:
        check_ident("id", ident)
        return await self.db.query(reads.get_server, ident)

    async def list_page(self, q: ListServersQuery) -> ServerPage:
        if len(q.search) > MAX_ID_LEN:
            raise InvalidArgument("search", f"must be at most {MAX_ID_LEN} characters")
        if q.project:
            check_name("project", q.project)
        if q.host:
            check_ident("host", q.host)
        if q.page_size < 0 or q.page_size > MAX_PAGE:
            raise InvalidArgument("page_size", f"must be between 1 and {MAX_PAGE} (0 means "
                                               f"{DEFAULT_PAGE}), got {q.page_size}")
        size = q.page_size or DEFAULT_PAGE
        project = q.project or DEFAULT_PROJECT
        fp = paging.fingerprint(q.search, q.system_scope, project, q.host,
                                q.status.value if q.status else "")
        after = paging.decode(q.page_token, fp, 2) if q.page_token else None
        return await self.db.query(self._list_tx, q, size, project, fp, after)

    @staticmethod
    def _list_tx(conn: Connection, q: ListServersQuery, size: int, project: str, fp: str,
                 after: list[str] | None) -> ServerPage:
        flt = reads.ListFilter(project=None if q.system_scope else project, search=q.search,
                               host_id=reads.host_id_of(conn, q.host) if q.host else None,
                               status=q.status)
        records, total = reads.list_servers(conn, flt, size + 1,
                                            (after[0], after[1]) if after else None,
                                            details=q.details)
        token = ""
        if len(records) > size:
            records = records[:size]
            last = records[-1].row
            token = paging.encode([last.name, last.id], fp)
        return ServerPage(records, token, total)

    # --- create ---

    async def create(self, spec: CreateServerSpec) -> tuple[ServerRecord, str]:
        validate_create(spec)
        server_id, task_id = str(uuid.uuid4()), str(uuid.uuid4())
        try:
            await self.db.write(self._create_tx, spec, server_id, task_id)
        except IntegrityError as exc:
            if is_unique_violation(exc) and "name" in str(exc.orig).lower():
                raise AlreadyExists("server", spec.name) from exc
            raise
        self.engine.launch(task_id)
        # Waits for placement so that NO_CAPACITY (with the per-host reasons) reaches
        # the caller directly; the server then stays in sched_fail for inspection.
        await self.engine.raise_early_failure(task_id, server_id, ("schedule",), "sched_fail",
                                              self.schedule_wait)
        return await self.db.query(reads.get_server, server_id), task_id

    def _create_tx(self, session: Session, spec: CreateServerSpec, server_id: str,
                   task_id: str) -> None:
        if session.scalar(select(Server.id).where(Server.name == spec.name)) is not None:
            raise AlreadyExists("server", spec.name)
        image = find_image(session, spec.image)
        if image.status != ImageStatus.ACTIVE:
            raise FailedPrecondition(f"image {image.name} is {image.status.value}",
                                     state=image.status.value)
        sys_size = spec.system_disk.size_mb or image.virtual_size_mb
        if sys_size < image.virtual_size_mb:
            raise InvalidArgument("system_disk.size_mb",
                                  f"must be at least the image's virtual size "
                                  f"({image.virtual_size_mb} MiB), got {sys_size}")
        if image.min_memory_mb and spec.memory_mb < image.min_memory_mb:
            raise InvalidArgument("memory_mb", f"image {image.name} needs at least "
                                               f"{image.min_memory_mb} MiB, got {spec.memory_mb}")
        for i, n in enumerate(spec.networks):
            if session.get(Network, n) is None:
                raise NotFound("network", n)
        prefer = find_host(session, spec.prefer_host).id if spec.prefer_host else ""
        disk_reqs = [spec.system_disk, *spec.data_disks]
        for i, d in enumerate(disk_reqs):
            st = d.storage or "local"
            if st not in ("local", "shared") and session.get(Storage, st) is None:
                raise NotFound("storage", st)
        now = utcnow()
        server = Server(id=server_id, name=spec.name, project=spec.project or DEFAULT_PROJECT,
                        status=ServerStatus.INIT, status_reason="", host_id=None,
                        vcpu_count=spec.vcpu_count, memory_mb=spec.memory_mb, image_id=image.id,
                        task_id=task_id, created_at=now, updated_at=now)
        for i, d in enumerate(disk_reqs):
            server.disks.append(Disk(id=str(uuid.uuid4()), index=i,
                                     storage_request=d.storage or "local",
                                     size_mb=sys_size if i == 0 else d.size_mb,
                                     image_id=image.id if i == 0 else None, path=""))
        for i, (net, mac) in enumerate(zip(spec.networks, _unused_macs(session, len(spec.networks)),
                                           strict=True)):
            server.nics.append(ServerNetwork(index=i, network=net, mac=mac))
        session.add(server)
        session.flush()
        insert_task(session, TaskKind.SERVER_CREATE, server_id, ServerCreateTask.FIRST,
                    {"auto_start": spec.auto_start, "prefer_host": prefer}, task_id=task_id)

    # --- start / stop / delete ---

    async def start(self, ident: str) -> tuple[ServerRecord, str]:
        return await self._operate(ident, TaskKind.SERVER_START, ServerStatus.STARTING, {})

    async def stop(self, ident: str, force: bool = False) -> tuple[ServerRecord, str]:
        return await self._operate(ident, TaskKind.SERVER_STOP, ServerStatus.STOPPING,
                                   {"force": force})

    async def delete(self, ident: str) -> tuple[ServerRecord, str]:
        return await self._operate(ident, TaskKind.SERVER_DELETE, ServerStatus.DELETING, {})

    async def _operate(self, ident: str, kind: TaskKind, status: ServerStatus,
                       params: dict) -> tuple[ServerRecord, str]:
        check_ident("id", ident)
        first = self.engine.definition(kind).FIRST
        task_id = str(uuid.uuid4())

        def tx(session: Session) -> str:
            server = find_server(session, ident, full=False)
            acquire_server(session, server.id, task_id, status)
            insert_task(session, kind, server.id, first, params, task_id=task_id)
            return server.id

        server_id = await self.db.write(tx)
        self.engine.launch(task_id)
        return await self.db.query(reads.get_server, server_id), task_id

    # --- serial console ---

    async def _placement(self, ident: str) -> tuple[Server, str]:
        def tx(session: Session) -> tuple[Server, str]:
            server = find_server(session, ident, full=False)
            if not server.host_id:
                raise FailedPrecondition(f"server {server.name} is not placed on a host",
                                         state=server.status.value)
            host = session.get(Host, server.host_id)
            assert host is not None
            return server, host.access_address
        return await self.db.read(tx)

    async def serial_log(self, ident: str, tail_lines: int) -> tuple[list[str], int]:
        check_ident("id", ident)
        check_range("tail_lines", tail_lines, 0, 10_000)
        server, address = await self._placement(ident)
        resp = await self.agents.read_serial_log(address, server.id, tail_lines or 100)
        return list(resp.lines), resp.next_offset

    async def watch_serial_log(self, ident: str,
                               tail_lines: int) -> AsyncGenerator[tuple[list[str], str], None]:
        """Yields (lines, host_id): the tail first if asked, then new lines as written.
        The agent stream is cancelled in `finally` when the caller goes away."""
        check_ident("id", ident)
        check_range("tail_lines", tail_lines, 0, 10_000)
        server, address = await self._placement(ident)
        offset = -1
        if tail_lines > 0:
            resp = await self.agents.read_serial_log(address, server.id, tail_lines)
            offset = resp.next_offset
            yield list(resp.lines), server.host_id or ""
        stream = self.agents.watch_serial_log(address, server.id, offset)
        async with contextlib.aclosing(stream):
            async for msg in stream:
                if msg.lines:
                    yield list(msg.lines), server.host_id or ""

