"""Read helpers shared by the domain modules and the task steps.

All take a Session first, so they run inside `db.read(fn, ...)`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, joinedload, selectinload

from ferry_common.errors import FailedPrecondition, NotFound

from ..states import TaskKind
from .models import Host, Image, Server, Task


@dataclass(frozen=True)
class Usage:
    cpu_used: int = 0
    mem_used_mb: int = 0
    server_count: int = 0


#: Everything a server message with details needs, in one round trip.
SERVER_FULL = (joinedload(Server.disks), joinedload(Server.nics))
#: Everything a host message needs.
HOST_FULL = (selectinload(Host.storages), selectinload(Host.networks))


def load_server(session: Session, server_id: str) -> Server | None:
    return session.scalars(select(Server).where(Server.id == server_id)
                           .options(*SERVER_FULL)).unique().one_or_none()


def find_server(session: Session, ident: str, *, full: bool = True) -> Server:
    """A server by id, else by name (one query); NotFound otherwise."""
    stmt = select(Server).where(or_(Server.id == ident, Server.name == ident))
    if full:
        stmt = stmt.options(*SERVER_FULL)
    rows = session.scalars(stmt).unique().all()
    if not rows:
        raise NotFound("server", ident)
    return next((s for s in rows if s.id == ident), rows[0])


def running_task(session: Session, ident: str, kind: TaskKind,
                 doing: str) -> tuple[Server, Task]:
    """A server and its running task of `kind`; FailedPrecondition saying the server is not
    `doing` otherwise (cancel and set-params requests)."""
    server = find_server(session, ident, full=False)
    task = session.get(Task, server.task_id) if server.task_id else None
    if task is None or task.kind != kind:
        raise FailedPrecondition(f"server {server.name} is {server.status.value}, not {doing}",
                                 state=server.status.value)
    return server, task


def find_host(session: Session, ident: str, *, full: bool = False) -> Host:
    stmt = select(Host).where(or_(Host.id == ident, Host.name == ident))
    if full:
        stmt = stmt.options(*HOST_FULL)
    rows = session.scalars(stmt).all()
    if not rows:
        raise NotFound("host", ident)
    return next((h for h in rows if h.id == ident), rows[0])


def find_image(session: Session, ident: str) -> Image:
    image = session.get(Image, ident)
    if image is None:
        image = session.scalars(select(Image).where(Image.name == ident)).one_or_none()
    if image is None:
        raise NotFound("image", ident)
    return image


def find_task(session: Session, task_id: str) -> Task:
    task = session.get(Task, task_id)
    if task is None:
        raise NotFound("task", task_id)
    return task


def host_usage(session: Session, host_ids: Iterable[str] | None = None) -> dict[str, Usage]:
    """vCPUs, memory and server count of the servers placed on each host."""
    q = (select(Server.host_id, func.coalesce(func.sum(Server.vcpu_count), 0),
                func.coalesce(func.sum(Server.memory_mb), 0), func.count(Server.id))
         .where(Server.host_id.is_not(None)).group_by(Server.host_id))
    if host_ids is not None:
        ids = list(host_ids)
        if not ids:
            return {}
        q = q.where(Server.host_id.in_(ids))
    return {str(hid): Usage(int(cpu), int(mem), int(n))
            for hid, cpu, mem, n in session.execute(q)}


def image_server_counts(session: Session, image_ids: Iterable[str]) -> dict[str, int]:
    ids = list(image_ids)
    if not ids:
        return {}
    q = (select(Server.image_id, func.count(Server.id)).where(Server.image_id.in_(ids))
         .group_by(Server.image_id))
    return {str(iid): int(n) for iid, n in session.execute(q)}


def search_clause(name_col, id_col, search: str):
    """Case-insensitive substring of the name, or the exact id."""
    return or_(name_col.icontains(search, autoescape=True), id_col == search)
