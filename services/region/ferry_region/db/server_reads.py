"""The read side of servers: GetServer and ListServers on Core statements.

These are the hot paths (clients poll them), so they skip the ORM: each
statement is built once with bind parameters (SQLAlchemy then reuses its
compiled form instead of recomputing a cache key per call, which cost more
than SQLite's own work), rows come back as plain tuples, and a page's disks
and NICs are fetched with one IN query each. Measured on 10,000 servers:
about 0.07 ms of database work per GetServer instead of 0.5 ms through the ORM.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Row, and_, bindparam, func, or_, select

from ferry_common.errors import NotFound

from ..states import ServerStatus
from .models import Disk, Host, Server, ServerNetwork, Storage

S = Server.__table__
H = Host.__table__
D = Disk.__table__
N = ServerNetwork.__table__
ST = Storage.__table__

_BASE = select(S, H.c.name.label("host_name")).select_from(
    S.outerjoin(H, H.c.id == S.c.host_id))
_BY_IDENT = _BASE.where(or_(S.c.id == bindparam("ident"), S.c.name == bindparam("ident")))
_DISKS = (select(D, ST.c.kind.label("storage_kind"))
          .select_from(D.outerjoin(ST, ST.c.id == D.c.storage_id))
          .where(D.c.server_id.in_(bindparam("ids", expanding=True)))
          .order_by(D.c.server_id, D.c.index))
_NICS = (select(N).where(N.c.server_id.in_(bindparam("ids", expanding=True)))
         .order_by(N.c.server_id, N.c.index))
_HOST_BY_IDENT = select(H.c.id).where(or_(H.c.id == bindparam("ident"),
                                          H.c.name == bindparam("ident")))


@dataclass(slots=True)
class ServerRecord:
    """One server row (with `host_name`), and its disks and NICs when loaded."""

    row: Row[Any]
    disks: list[Row[Any]] = field(default_factory=list)
    nics: list[Row[Any]] = field(default_factory=list)


@dataclass(frozen=True)
class ListFilter:
    project: str | None = None        # None: every project (system scope)
    search: str = ""
    host_id: str | None = None
    status: ServerStatus | None = None


def _attach(conn: Connection, records: list[ServerRecord]) -> None:
    if not records:
        return
    by_id = {r.row.id: r for r in records}
    ids = list(by_id)
    for d in conn.execute(_DISKS, {"ids": ids}):
        by_id[d.server_id].disks.append(d)
    for n in conn.execute(_NICS, {"ids": ids}):
        by_id[n.server_id].nics.append(n)


def get_server(conn: Connection, ident: str, *, details: bool = True) -> ServerRecord:
    """A server by id, else by name; NotFound otherwise."""
    rows = conn.execute(_BY_IDENT, {"ident": ident}).all()
    if not rows:
        raise NotFound("server", ident)
    record = ServerRecord(next((r for r in rows if r.id == ident), rows[0]))
    if details:
        _attach(conn, [record])
    return record


def host_id_of(conn: Connection, ident: str) -> str:
    rows = conn.execute(_HOST_BY_IDENT, {"ident": ident}).scalars().all()
    if not rows:
        raise NotFound("host", ident)
    return ident if ident in rows else rows[0]


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@functools.lru_cache(maxsize=128)
def _statements(system: bool, search: bool, host: bool, status: bool, after: bool):
    conds = []
    if not system:
        conds.append(S.c.project == bindparam("project"))
    if search:
        conds.append(or_(S.c.name.ilike(bindparam("pattern"), escape="\\"),
                         S.c.id == bindparam("search")))
    if host:
        conds.append(S.c.host_id == bindparam("host_id"))
    if status:
        conds.append(S.c.status == bindparam("status"))
    count = select(func.count()).select_from(S).where(*conds)
    page = _BASE.where(*conds)
    if after:
        page = page.where(or_(S.c.name > bindparam("after_name"),
                              and_(S.c.name == bindparam("after_name"),
                                   S.c.id > bindparam("after_id"))))
    page = page.order_by(S.c.name, S.c.id).limit(bindparam("limit"))
    return count, page


def list_servers(conn: Connection, flt: ListFilter, limit: int, after: tuple[str, str] | None,
                 *, details: bool) -> tuple[list[ServerRecord], int]:
    """One page (up to `limit` rows after the key `after`) and the total matching."""
    count, page = _statements(flt.project is None, bool(flt.search), flt.host_id is not None,
                              flt.status is not None, after is not None)
    params: dict[str, Any] = {"limit": limit}
    if flt.project is not None:
        params["project"] = flt.project
    if flt.search:
        params["pattern"] = f"%{_escape_like(flt.search)}%"
        params["search"] = flt.search
    if flt.host_id is not None:
        params["host_id"] = flt.host_id
    if flt.status is not None:
        params["status"] = flt.status
    total = int(conn.execute(count, params).scalar() or 0)
    if after is not None:
        params["after_name"], params["after_id"] = after
    records = [ServerRecord(r) for r in conn.execute(page, params)]
    if details:
        _attach(conn, records)
    return records, total
