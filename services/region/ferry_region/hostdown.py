"""Host down: confirm that a host whose health key vanished is gone, then rescue its guests.

For every vanished health key (an *incident*, see `hostdown_store`):

1. wait the confirmation window (the host may come back: its key reappears);
2. hold while the region's etcd link is not synced (etcd down is not host down);
3. pause if more than `max_expired_share` of the hosts expired within
   `mass_period` (a network or etcd problem is likelier than mass death);
4. confirm that the host's agent does not answer a gRPC health check;
5. mark the host offline, and for each server that was running there: all
   disks shared -> `MigrationService.MigrateServer(rescue_mode, auto_start)` on
   the region's own public API, at most `max_in_flight` at once, each result a
   task; local disks -> reported lost in the server's status reason, untouched.

The host fences its shared-storage guests (ferry_host.health) within its
fencing deadline, which is shorter than the lease TTL; the key vanishes only
after the TTL, and the rescue starts a window later, so a guest never runs
twice. Incidents are persisted: after a region restart each open one
continues where it was (a server already moved is no longer on the host).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import grpc
from ferry_common.channels import open_channel
from ferry_proto.region.v1 import (
    migration_service_pb2 as mpb,
)
from ferry_proto.region.v1 import (
    migration_service_pb2_grpc as mgrpc,
)
from ferry_proto.region.v1 import (
    resources_pb2,
)
from ferry_proto.region.v1 import (
    task_service_pb2 as tpb,
)
from ferry_proto.region.v1 import (
    task_service_pb2_grpc as tgrpc,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import select, update
from sqlalchemy.orm import Session, selectinload

from .config import HostDownConfig, RegionConfig
from .db.engine import Database
from .db.models import Host, Server, utcnow
from .domain.hosts import HostRegistry
from .etcd_watcher import HealthWatcher, LinkState
from .hostdown_leader import Elector
from .hostdown_states import IncidentState
from .hostdown_store import HostDownStore, IncidentStateError
from .states import HostHealth, HostStatus, ServerStatus, StorageKind

log = logging.getLogger(__name__)

#: gRPC health service name the region publishes for host keepers: SERVING while this
#: replica sees etcd (it may rescue), NOT_SERVING while it does not (it holds every
#: rescue). A keeper that cannot renew its lease skips fencing only while every region
#: it knows answers NOT_SERVING: etcd is down for everyone, nobody can rescue.
GUARD_SERVICE = "ferry.region.v1.HostDownGuard"

#: Server statuses meaning "running there, or supposed to be".
RUNNING_STATUSES = frozenset({ServerStatus.RUNNING, ServerStatus.STARTING, ServerStatus.UNKNOWN})
_FINAL_TASK_STATES = {resources_pb2.TASK_STATE_SUCCEEDED, resources_pb2.TASK_STATE_FAILED}


async def agent_answers(address: str, timeout: float, tls: Any = None) -> str | None:
    """The agent's health status name if it answers within `timeout`, else None."""
    if not address:
        return None
    channel = open_channel(address, tls)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.aio.AioRpcError as exc:
        if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            return None
        return exc.code().name  # it answered, with an error: alive
    finally:
        await channel.close()


def _servers_on(session: Session, host_id: str) -> list[tuple[str, str, list[str]]]:
    """(server id, status, [non-shared disk ids]) of servers on the host that run or should."""
    out = []
    for srv in session.scalars(select(Server).where(Server.host_id == host_id,
                                                    Server.status.in_(RUNNING_STATUSES))
                               .options(selectinload(Server.disks))):
        local = [d.id for d in srv.disks
                 if d.storage is None or d.storage.kind is not StorageKind.SHARED]
        if not srv.disks:
            local = ["(no disk)"]
        out.append((srv.id, srv.status.value, local))
    return out


def _host_facts(session: Session, host_id: str) -> tuple[str, bool, bool] | None:
    host = session.get(Host, host_id)
    if host is None:
        return None
    return host.access_address, host.auto_migrate_on_host_down, host.auto_migrate_on_host_shutdown


class HostDown:
    def __init__(self, config: HostDownConfig, db: Database, hosts: HostRegistry,
                 watcher: HealthWatcher, region_address: Callable[[], str],
                 tls: Any = None) -> None:
        self.config = config
        self.db = db
        self.hosts = hosts
        self.watcher = watcher
        self.store = HostDownStore(db)
        self._region_address = region_address
        self._tls = tls
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._drivers: dict[str, asyncio.Task] = {}
        self._slots = asyncio.Semaphore(max(1, config.max_in_flight))
        self._held_logged: set[str] = set()
        #: Set by `wire_hostdown`: only the elected replica confirms and rescues.
        self.elector: Elector | None = None
        #: Set by `wire_hostdown`: publishes GUARD_SERVICE's status.
        self.publish: Callable[[bool], Any] | None = None
        self._published: bool | None = None
        #: Monotonic time since when the etcd watch is synced (None: it is not).
        self._synced_since: float | None = None
        self.last_error: BaseException | None = None

    # ---- watcher hooks ---------------------------------------------------------------------

    async def on_snapshot(self, keys: dict[str, int], revision: int) -> None:
        opened = await self.store.snapshot(keys, revision)
        for iid in opened:
            log.warning("host-down: a health key vanished while the region was not watching "
                        "(seen at revision %d): incident %s", revision, iid)
        self._wake.set()

    async def on_event(self, kind: str, host_id: str, create_rev: int, revision: int,
                       value: bytes = b"") -> None:
        shutdown = False
        if kind == "PUT" and value:
            try:
                shutdown = bool(json.loads(value).get("shutdown"))
            except (ValueError, AttributeError):
                log.warning("host-down: host %s health key holds no JSON object", host_id)
        iid = await self.store.event(kind, host_id, create_rev, revision, shutdown)
        if shutdown:
            log.warning("host-down: host %s announces a shutdown on purpose", host_id)
        if iid:
            log.warning("host-down: host %s health key deleted at revision %d: incident %s, "
                        "confirmation window %.1fs", host_id, revision, iid, self.config.window)
        self._wake.set()

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._loop(), name="host-down detector")

    async def stop(self) -> None:
        tasks = [t for t in [self._loop_task, *self._drivers.values()] if t is not None]
        self._loop_task = None
        self._drivers.clear()
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                log.debug("host-down: task ended while stopping", exc_info=True)

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), 0.25)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self._publish()
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = exc
                log.exception("host-down detector: tick failed")

    async def _publish(self) -> None:
        # Only a synced watch lets this replica confirm or rescue (see `_confirm`, `_rescue`).
        sees_etcd = self.watcher.link.state is LinkState.SYNCED
        if sees_etcd and self._synced_since is None:
            self._synced_since = time.monotonic()
        elif not sees_etcd:
            self._synced_since = None
        if self.publish is not None and sees_etcd != self._published:
            await self.publish(sees_etcd)
            self._published = sees_etcd

    @property
    def acting(self) -> bool:
        return self.elector is None or self.elector.is_leader

    async def _tick(self) -> None:
        if not self.acting:
            return  # another replica leads; incidents are recorded all the same
        now = utcnow()
        for inc in await self.store.open_incidents():
            if inc.id in self._drivers and not self._drivers[inc.id].done():
                continue
            if inc.state is IncidentState.RESCUING:
                self._drive(inc.id, inc.host_id, dict(inc.results))
                continue
            if inc.state is not IncidentState.WAITING:
                await self._maybe_cancel_paused(inc.id, inc.host_id)
                continue
            if (now - inc.detected_at).total_seconds() < self.config.window:
                if inc.host_id in self.watcher.online:
                    await self._finish(inc.id, IncidentState.WAITING, IncidentState.CANCELLED,
                                       "the host's health key came back within the window")
                continue
            await self._confirm(inc.id, inc.host_id, inc.detected_at, inc.kind)

    async def _maybe_cancel_paused(self, iid: str, host_id: str) -> None:
        if self.watcher.link.state is LinkState.SYNCED and host_id in self.watcher.online:
            await self._finish(iid, IncidentState.PAUSED, IncidentState.CANCELLED,
                               "the host's health key came back")

    async def _finish(self, iid: str, old: IncidentState, new: IncidentState, reason: str,
                      results: dict | None = None) -> None:
        try:
            await self.store.transition(iid, old, new, reason, results)
        except IncidentStateError as exc:
            log.debug("host-down: %s", exc)
            return
        level = logging.WARNING if new is not IncidentState.CANCELLED else logging.INFO
        log.log(level, "host-down incident %s: %s -> %s: %s", iid, old.name, new.name, reason)

    # ---- confirmation ---------------------------------------------------------------------

    async def _confirm(self, iid: str, host_id: str, detected_at: dt.datetime,
                       kind: str = "down") -> None:
        synced_for = time.monotonic() - self._synced_since if self._synced_since else -1.0
        if self.watcher.link.state is LinkState.SYNCED and 0 <= synced_for < \
                self.config.resync_grace:
            # Just resynced: keepers that held off fencing (they were told this region did not
            # see etcd) get time to learn it does again, and fence, before anything is confirmed.
            return
        if self.watcher.link.state is not LinkState.SYNCED or synced_for < 0:
            if iid not in self._held_logged:
                self._held_logged.add(iid)
                log.warning("host-down incident %s (host %s): etcd link is %s; holding "
                            "(etcd down is not host down)", iid, host_id,
                            self.watcher.link.state.name)
            return
        if host_id in self.watcher.online:
            await self._finish(iid, IncidentState.WAITING, IncidentState.CANCELLED,
                               "the host's health key came back within the window")
            return
        host = await self.db.read(_host_facts, host_id)
        if not host:
            await self._finish(iid, IncidentState.WAITING, IncidentState.CANCELLED,
                               "not a registered host")
            return
        address, auto_down, auto_shutdown = host
        # A host shut down on purpose moves its guests only with both flags (the API lets
        # the shutdown flag be enabled only together with the host-down flag).
        auto = auto_down and (auto_shutdown if kind == "shutdown" else True)
        off_reason = ("the host was shut down on purpose and auto_migrate_on_host_shutdown is "
                      "disabled" if kind == "shutdown" else
                      "auto_migrate_on_host_down is disabled")
        since = utcnow() - dt.timedelta(seconds=self.config.mass_period)
        recent, total = await self.store.recent_share(since)
        if kind == "down" and total and recent / total > self.config.max_expired_share:
            await self._finish(
                iid, IncidentState.WAITING, IncidentState.PAUSED,
                f"auto-rescue paused: {recent} of {total} hosts lost their health key within "
                f"{self.config.mass_period:.0f}s (more than {self.config.max_expired_share:.0%}); "
                "an etcd or network failure is likelier than that many dead hosts. Rescue by "
                "hand (server-migrate --rescue-mode) once the hosts are known to be down.")
            return
        answer = await agent_answers(address, self.config.probe_timeout, self._tls)
        if answer is not None:
            await self._finish(iid, IncidentState.WAITING, IncidentState.CANCELLED,
                               f"the agent at {address} answers ({answer}): the host lost its "
                               "lease but is alive; its keeper fenced its shared-storage guests, "
                               "not rescuing")
            return
        await self.hosts.set_health(host_id, HostHealth.OFFLINE)
        servers = await self.db.read(_servers_on, host_id)
        results: dict[str, Any] = {}
        lost = []
        for sid, status, local in servers:
            if local:
                results[sid] = {"action": "lost", "outcome": f"local disks {', '.join(local)}"}
                lost.append(sid)
            elif auto:
                results[sid] = {"action": "rescue", "status": status}
            else:
                results[sid] = {"action": "skipped", "outcome": off_reason}
        if lost:
            await self._mark_lost(host_id, lost)
        confirmed_after = (utcnow() - detected_at).total_seconds()
        if not any(r["action"] == "rescue" for r in results.values()):
            await self._finish(iid, IncidentState.WAITING, IncidentState.DONE,
                               f"host confirmed {kind} after {confirmed_after:.1f}s; nothing to "
                               f"rescue ({len(lost)} lost"
                               f"{'' if auto else '; ' + off_reason})", results)
            return
        await self._finish(iid, IncidentState.WAITING, IncidentState.RESCUING,
                           f"host confirmed {kind} after {confirmed_after:.1f}s; rescuing "
                           f"{sum(r['action'] == 'rescue' for r in results.values())} server(s)",
                           results)
        self._drive(iid, host_id, results)

    async def _mark_lost(self, host_id: str, server_ids: list[str]) -> None:
        reason = (f"host {host_id} is down and this server has local disks: not rescued "
                  "(lost until the host comes back)")

        def tx(session: Session) -> None:
            session.execute(update(Server).where(Server.id.in_(server_ids))
                            .values(status_reason=reason, updated_at=utcnow()))
        await self.db.write(tx)
        for sid in server_ids:
            log.error("host-down: server %s on host %s LOST (local disks); left untouched",
                      sid, host_id)

    # ---- rescues --------------------------------------------------------------------------

    def _drive(self, iid: str, host_id: str, results: dict[str, Any]) -> None:
        self._drivers[iid] = asyncio.create_task(self._rescue_all(iid, host_id, results),
                                                 name=f"host-down rescue {host_id}")

    async def _rescue_all(self, iid: str, host_id: str, results: dict[str, Any]) -> None:
        started = time.monotonic()
        pending = [sid for sid, r in results.items()
                   if r.get("action") == "rescue" and "outcome" not in r]
        await asyncio.gather(*(self._rescue(iid, host_id, sid, results) for sid in pending))
        ok = sum(r.get("outcome") == "succeeded" for r in results.values())
        await self._finish(iid, IncidentState.RESCUING, IncidentState.DONE,
                           f"{ok} of {sum(r.get('action') == 'rescue' for r in results.values())}"
                           f" rescue(s) succeeded in {time.monotonic() - started:.1f}s", results)

    async def _rescue(self, iid: str, host_id: str, sid: str, results: dict[str, Any]) -> None:
        async with self._slots:
            while self.watcher.link.state is not LinkState.SYNCED or not self.acting:
                await asyncio.sleep(0.5)  # etcd down, or not the leader: no rescue starts
            entry = results[sid]
            address = self._region_address()
            channel = open_channel(address, self._tls)
            try:
                task_id = entry.get("task_id")
                if not task_id:
                    on_host = await self.db.read(
                        lambda s: s.scalar(select(Server.host_id).where(Server.id == sid)))
                    if on_host != host_id:
                        entry["outcome"] = f"already moved (now on {on_host})"
                        await self.store.save_results(iid, results)
                        return
                    await self._wait_for_a_target(host_id)
                    reply = await self._request(channel, sid)
                    task_id = entry["task_id"] = reply.task_id
                    entry["requested_at"] = utcnow().isoformat()
                    await self.store.save_results(iid, results)
                    log.warning("host-down: rescue of server %s from host %s: task %s",
                                sid, host_id, task_id)
                entry["outcome"] = await self._wait_task(channel, task_id)
            except grpc.aio.AioRpcError as exc:
                entry["outcome"] = f"error: {exc.code().name}: {exc.details()}"
                log.error("host-down: rescue of server %s failed: %s", sid, entry["outcome"])
            finally:
                await channel.close()
            entry["finished_at"] = utcnow().isoformat()
            await self.store.save_results(iid, results)

    async def _wait_for_a_target(self, host_id: str, timeout: float = 60.0) -> None:
        """After a region restart hosts are READY until their agents register again: wait
        (bounded) until some other host is running and online, so the scheduler can place."""
        def tx(session: Session) -> bool:
            return session.scalar(select(Host.id).where(
                Host.id != host_id, Host.status == HostStatus.RUNNING,
                Host.host_status == HostHealth.ONLINE).limit(1)) is not None
        deadline = time.monotonic() + timeout
        while not await self.db.read(tx) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)

    async def _request(self, channel: grpc.aio.Channel, sid: str) -> mpb.MigrateServerResponse:
        """MigrateServer in rescue mode; retried a few times while no host can take it yet."""
        stub = mgrpc.MigrationServiceStub(channel)
        for attempt in range(4):
            try:
                return await stub.MigrateServer(
                    mpb.MigrateServerRequest(id=sid, rescue_mode=True, auto_start=True),
                    timeout=30)
            except grpc.aio.AioRpcError as exc:
                if exc.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED or attempt == 3:
                    raise
                log.warning("host-down: rescue of %s: no host yet (%s); retrying", sid,
                            exc.details())
                await asyncio.sleep(2.0 * (attempt + 1))
        raise AssertionError("unreachable")

    async def _wait_task(self, channel: grpc.aio.Channel, task_id: str) -> str:
        stub = tgrpc.TaskServiceStub(channel)
        deadline = time.monotonic() + self.config.rescue_timeout
        while time.monotonic() < deadline:
            task = (await stub.GetTask(tpb.GetTaskRequest(id=task_id), timeout=10)).task
            if task.state in _FINAL_TASK_STATES:
                if task.state == resources_pb2.TASK_STATE_SUCCEEDED:
                    return "succeeded"
                return f"failed: {task.error_reason or ''} {task.error}".strip()
            await asyncio.sleep(0.2)
        return f"timeout after {self.config.rescue_timeout:.0f}s (task {task_id} still running)"


def wire_hostdown(config: RegionConfig, db: Database, hosts: HostRegistry,
                  watcher: HealthWatcher | None, server: Any,
                  region_address: Callable[[], str]) -> HostDown | None:
    """Hooks the detector to the health watcher and the region's shutdown; starts it."""
    if watcher is None or not config.hostdown.enabled:
        return None
    detector = HostDown(config.hostdown, db, hosts, watcher, region_address, config.peer_tls)
    detector.elector = Elector(config.etcd, f"{socket.gethostname()}/{os.getpid()}/"
                               f"{uuid.uuid4().hex[:8]}", config.hostdown.leader_ttl)
    watcher.on_snapshot = detector.on_snapshot
    watcher.on_event = detector.on_event

    async def publish(sees_etcd: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if sees_etcd else \
            health_pb2.HealthCheckResponse.NOT_SERVING
        await server.set_service_health(GUARD_SERVICE, status)
        log.log(logging.INFO if sees_etcd else logging.WARNING,
                "host-down guard: this region %s etcd", "sees" if sees_etcd else "does NOT see")

    detector.publish = publish

    async def stop() -> None:
        await detector.stop()
        await detector.elector.stop()  # type: ignore[union-attr]

    server.on_shutdown("stop host-down detector", stop)
    detector.elector.start()
    detector.start()
    return detector
