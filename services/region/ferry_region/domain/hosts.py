"""Hosts: registration by their agents, listing, health from etcd, change feed.

Every change of a host's facts, usage or health is published on
`events` (host ids) after its transaction committed; `HostService.WatchHosts`
and through it the scheduler follow that feed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ferry_common.errors import AlreadyExists, InvalidArgument
from ferry_common.validation import MAX_ID_LEN, check_enum, check_ident, check_name

from ferry_proto.region.v1 import resources_pb2

from ..db.engine import Database, affected
from ..db.models import Host, HostNetwork, HostStorage, Network, Server, Storage, utcnow
from ..db.queries import HOST_FULL, Usage, find_host, host_usage, search_clause
from ..events import Broadcaster
from ..states import Accelerator, HostHealth, HostStatus, StorageKind, from_proto

ADDRESS_RE = re.compile(r"^[A-Za-z0-9._\-\[\]:]+:\d{1,5}$")

#: host id -> health from etcd, or None when etcd's view is not known.
HealthView = Callable[[str], HostHealth | None]


@dataclass
class StorageReport:
    storage_id: str
    name: str
    kind: int
    path: str
    capacity_mb: int
    free_mb: int


@dataclass
class Registration:
    host_id: str
    name: str
    access_address: str
    cpu_model: str = ""
    cpu_microcode: str = ""
    kernel_version: str = ""
    accelerator: int = 0
    cpu_count: int = 0
    mem_size_mb: int = 0
    storages: list[StorageReport] = field(default_factory=list)
    wire: str = ""
    networks: list[str] = field(default_factory=list)
    guest_ids: list[str] = field(default_factory=list)
    agent_version: str = ""


@dataclass
class HostView:
    """A host row with its usage, ready to convert to proto."""

    host: Host
    usage: Usage


def _check_len(field_name: str, value: str, limit: int) -> None:
    if len(value) > limit or not value.isprintable():
        raise InvalidArgument(field_name, f"must be at most {limit} printable characters")


def validate_registration(r: Registration) -> None:
    check_ident("host_id", r.host_id)
    check_name("name", r.name)
    if not r.access_address or len(r.access_address) > 256 or not ADDRESS_RE.match(
            r.access_address):
        raise InvalidArgument("access_address", "must be host:port")
    for f_name, value, limit in (("cpu_model", r.cpu_model, 256),
                                 ("cpu_microcode", r.cpu_microcode, 64),
                                 ("kernel_version", r.kernel_version, 128),
                                 ("agent_version", r.agent_version, 64)):
        _check_len(f_name, value, limit)
    check_enum("accelerator", r.accelerator, resources_pb2.Accelerator, allow_unspecified=True)
    if r.cpu_count < 0:
        raise InvalidArgument("cpu_count", f"must not be negative, got {r.cpu_count}")
    if r.mem_size_mb < 0:
        raise InvalidArgument("mem_size_mb", f"must not be negative, got {r.mem_size_mb}")
    seen = set()
    for i, s in enumerate(r.storages):
        p = f"storages[{i}]"
        check_ident(f"{p}.storage_id", s.storage_id)
        if s.storage_id in seen:
            raise InvalidArgument(f"{p}.storage_id", f"duplicate storage {s.storage_id!r}")
        seen.add(s.storage_id)
        _check_len(f"{p}.name", s.name, 64)
        check_enum(f"{p}.kind", s.kind, resources_pb2.StorageKind)
        _check_len(f"{p}.path", s.path, 1024)
        if s.capacity_mb < 0 or s.free_mb < 0:
            raise InvalidArgument(f"{p}.capacity_mb", "sizes must not be negative")
    if r.wire:
        check_name("wire", r.wire)
    for i, n in enumerate(r.networks):
        check_name(f"networks[{i}]", n)
    for i, g in enumerate(r.guest_ids):
        check_ident(f"guests[{i}].server_id", g)


class HostRegistry:
    def __init__(self, db: Database, events: Broadcaster, *,
                 health: HealthView | None = None, refresh_interval: int = 30) -> None:
        self.db = db
        self.events = events
        self.health: HealthView = health or (lambda _hid: None)
        self.refresh_interval = refresh_interval

    # --- registration ---

    async def register(self, r: Registration) -> tuple[HostView, dict[str, bool]]:
        """Upserts the host, its storages and networks; returns the stored host and,
        per reported guest, whether the region places it on this host."""
        validate_registration(r)
        health = self.health(r.host_id) or HostHealth.ONLINE
        view, assignments = await self.db.write(self._register_tx, r, health)
        # The etcd watcher may have seen the health key change while the row
        # was being written (its UPDATE then matched no row): apply it now.
        now = self.health(r.host_id)
        if now is not None and now != health:
            await self.set_health(r.host_id, now)
            view = await self.get(r.host_id)
        self.events.publish(r.host_id)
        return view, assignments

    def _register_tx(self, session: Session, r: Registration,
                     health: HostHealth) -> tuple[HostView, dict[str, bool]]:
        other = session.scalar(select(Host.id).where(Host.name == r.name, Host.id != r.host_id))
        if other is not None:
            raise AlreadyExists("host", r.name)
        now = utcnow()
        host = session.scalars(select(Host).where(Host.id == r.host_id)
                               .options(*HOST_FULL)).one_or_none()
        if host is None:
            host = Host(id=r.host_id, created_at=now, enabled=True, hypervisor="kvm")
            session.add(host)
        host.name = r.name
        host.access_address = r.access_address
        host.status = HostStatus.RUNNING
        host.host_status = health
        host.cpu_model = r.cpu_model
        host.cpu_microcode = r.cpu_microcode
        host.kernel_version = r.kernel_version
        host.accelerator = from_proto(Accelerator, r.accelerator) or Accelerator.UNSPECIFIED
        host.cpu_count = r.cpu_count
        host.mem_size_mb = r.mem_size_mb
        host.wire = r.wire
        host.agent_version = r.agent_version
        host.registered_at = now
        host.updated_at = now
        session.flush()

        mounts = {hs.storage_id: hs for hs in host.storages}
        keep = set()
        for s in r.storages:
            storage = session.get(Storage, s.storage_id)
            if storage is None:
                storage = Storage(id=s.storage_id)
                session.add(storage)
            storage.name = s.name or s.storage_id
            storage.kind = from_proto(StorageKind, s.kind) or StorageKind.LOCAL
            storage.capacity_mb = s.capacity_mb
            storage.free_mb = s.free_mb
            storage.updated_at = now
            session.flush()
            mount = mounts.get(s.storage_id)
            if mount is None:
                mount = HostStorage(host_id=host.id, storage_id=s.storage_id)
                host.storages.append(mount)
            mount.path = s.path
            keep.add(s.storage_id)
        for sid, mount in mounts.items():
            if sid not in keep:
                host.storages.remove(mount)

        nets = set(r.networks)
        for n in nets:
            net = session.get(Network, n)
            if net is None:
                session.add(Network(name=n, wire=r.wire))
            elif r.wire and net.wire != r.wire:
                net.wire = r.wire
        session.flush()
        current = {hn.network: hn for hn in host.networks}
        for n in nets - current.keys():
            host.networks.append(HostNetwork(host_id=host.id, network=n))
        for n in current.keys() - nets:
            host.networks.remove(current[n])
        session.flush()

        placed: dict[str, bool] = {}
        if r.guest_ids:
            rows = {sid: (hid, tid) for sid, hid, tid in session.execute(
                select(Server.id, Server.host_id, Server.task_id)
                .where(Server.id.in_(r.guest_ids))).all()}
            # A server a task holds (a migration in flight) may be on either host for
            # now: it is not reported, so no agent acts on it mid-move.
            placed = {g: rows[g][0] == host.id if g in rows else False
                      for g in r.guest_ids if g not in rows or rows[g][1] is None}
        host = session.scalars(select(Host).where(Host.id == r.host_id).options(*HOST_FULL)
                               .execution_options(populate_existing=True)).one()
        return HostView(host, host_usage(session, [host.id]).get(host.id, Usage())), placed

    # --- health (etcd) ---

    async def set_health(self, host_id: str, health: HostHealth) -> bool:
        def tx(session: Session) -> bool:
            return affected(session, update(Host)
                            .where(Host.id == host_id, Host.host_status != health)
                            .values(host_status=health, updated_at=utcnow())) == 1
        changed = await self.db.write(tx)
        if changed:
            self.events.publish(host_id)
        return changed

    async def sync_health(self, online_ids: Iterable[str]) -> list[str]:
        """Sets every host online iff its id is in `online_ids`; returns changed ids."""
        online = set(online_ids)

        def tx(session: Session) -> list[str]:
            changed = []
            for hid, cur in session.execute(select(Host.id, Host.host_status)).all():
                want = HostHealth.ONLINE if hid in online else HostHealth.OFFLINE
                if cur != want:
                    session.execute(update(Host).where(Host.id == hid, Host.host_status == cur)
                                    .values(host_status=want, updated_at=utcnow()))
                    changed.append(hid)
            return changed
        changed = await self.db.write(tx)
        self.events.publish(*changed)
        return changed

    async def mark_unregistered(self) -> None:
        """At region start: RUNNING hosts become READY until their agent registers again."""
        def tx(session: Session) -> None:
            session.execute(update(Host).where(Host.status == HostStatus.RUNNING)
                            .values(status=HostStatus.READY))
        await self.db.write(tx)

    # --- reads ---

    async def list_hosts(self, hypervisor: str = "", search: str = "") -> list[HostView]:
        if len(hypervisor) > 32:
            raise InvalidArgument("hypervisor", "must be at most 32 characters")
        if len(search) > MAX_ID_LEN:
            raise InvalidArgument("search", f"must be at most {MAX_ID_LEN} characters")

        def tx(session: Session) -> list[HostView]:
            stmt = select(Host).order_by(Host.name).options(*HOST_FULL)
            if hypervisor:
                stmt = stmt.where(Host.hypervisor == hypervisor.lower())
            if search:
                stmt = stmt.where(search_clause(Host.name, Host.id, search))
            hosts = list(session.scalars(stmt).unique().all())
            usage = host_usage(session, [h.id for h in hosts]) if len(hosts) < 500 \
                else host_usage(session)
            return [HostView(h, usage.get(h.id, Usage())) for h in hosts]
        return await self.db.read(tx)

    async def get(self, ident: str) -> HostView:
        check_ident("id", ident)

        def tx(session: Session) -> HostView:
            host = find_host(session, ident, full=True)
            return HostView(host, host_usage(session, [host.id]).get(host.id, Usage()))
        return await self.db.read(tx)

    async def set_auto_migrate(self, ident: str, on_down: bool | None,
                               on_shutdown: bool | None) -> HostView:
        """Changes the automatic migration flags; shutdown migration needs host-down migration."""
        check_ident("id", ident)
        if on_down is None and on_shutdown is None:
            raise InvalidArgument("auto_migrate_on_host_down",
                                  "give auto_migrate_on_host_down and/or auto_migrate_on_host_shutdown")

        def tx(session: Session) -> str:
            host = find_host(session, ident, full=False)
            down = host.auto_migrate_on_host_down if on_down is None else on_down
            shutdown = host.auto_migrate_on_host_shutdown if on_shutdown is None else on_shutdown
            if shutdown and not down:
                field = ("auto_migrate_on_host_shutdown" if on_shutdown
                         else "auto_migrate_on_host_down")
                raise InvalidArgument(field, "auto-migrate on host shutdown requires auto-migrate "
                                             "on host down to be enabled as well")
            host.auto_migrate_on_host_down = down
            host.auto_migrate_on_host_shutdown = shutdown
            return host.id
        host_id = await self.db.write(tx)
        self.events.publish(host_id)
        return await self.get(host_id)

    async def set_enabled(self, ident: str, enabled: bool) -> HostView:
        """Enables or disables a host for scheduling; the scheduler hears it through WatchHosts."""
        check_ident("id", ident)

        def tx(session: Session) -> str:
            host = find_host(session, ident, full=False)
            host.enabled = enabled
            return host.id
        host_id = await self.db.write(tx)
        self.events.publish(host_id)
        return await self.get(host_id)

    async def views(self, host_ids: Iterable[str]) -> tuple[list[HostView], list[str]]:
        """Current views of `host_ids` and the ids that no longer exist."""
        ids = sorted(set(host_ids))

        def tx(session: Session) -> tuple[list[HostView], list[str]]:
            hosts = list(session.scalars(select(Host).where(Host.id.in_(ids))
                                         .order_by(Host.name).options(*HOST_FULL)).all())
            usage = host_usage(session, [h.id for h in hosts])
            found = {h.id for h in hosts}
            return ([HostView(h, usage.get(h.id, Usage())) for h in hosts],
                    [i for i in ids if i not in found])
        return await self.db.read(tx)
