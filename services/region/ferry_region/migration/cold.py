"""Cold migration and rescue: checks, the agent calls of the copy, the batch gate.

A cold migration moves a stopped server's local disks host to host (the target
agent pulls them from the source agent; the region only follows progress),
then points the database at the target, then removes the source copy. A rescue
moves only metadata: the source host is offline and every disk is shared.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from ferry_common.errors import (
    FailedPrecondition,
    FerryError,
    InvalidArgument,
    from_rpc_error,
)
from ferry_proto.host.v1 import migration_pb2, migration_pb2_grpc
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ..clients.host_agent import AgentClients
from ..db.models import Host, HostStorage, Server, Storage
from ..db.queries import load_server
from ..states import HostHealth, ServerStatus, StorageKind

log = logging.getLogger(__name__)

#: Stages a cancel can still stop: before the database points at the target.
CANCELLABLE_STAGES = frozenset({"queued", "schedule", "copy"})

#: Statuses a cold migration starts from (migrate_failed: a retry).
COLD_FROM = frozenset({ServerStatus.READY, ServerStatus.MIGRATE_FAILED})
#: Statuses a rescue starts from: whatever the server was when its host died.
RESCUE_FROM = frozenset({ServerStatus.READY, ServerStatus.RUNNING, ServerStatus.UNKNOWN,
                         ServerStatus.MIGRATE_FAILED, ServerStatus.START_FAIL})
MAX_BANDWIDTH_MB = 100_000
#: Seconds to wait for a host agent channel to (re)connect before a copy.
CONNECT_WAIT = 10.0


class CopyFailed(FerryError):
    """The target agent reported a failed disk copy (reason from the agent)."""

    code = grpc.StatusCode.INTERNAL
    reason = "COPY_FAILED"


@dataclass
class DiskPlan:
    disk_id: str
    index: int
    shared: bool
    storage_id: str


def check_request(server: Server, source: Host | None, *, rescue: bool) -> None:
    """FAILED_PRECONDITION naming the server status, host state or disk that forbids it."""
    if not server.host_id or source is None:
        raise FailedPrecondition(f"server {server.name} is not placed on a host",
                                 state=server.status.value)
    if rescue:
        if server.status not in RESCUE_FROM:
            raise FailedPrecondition(f"server {server.name} is {server.status.value}; a rescue "
                                     "needs it settled", state=server.status.value)
        if source.host_status != HostHealth.OFFLINE:
            raise FailedPrecondition(
                f"host {source.name} is {source.host_status.value}; rescue mode needs the source "
                "host offline", state=source.host_status.value, reason="HOST_ONLINE",
                metadata={"host_id": source.id})
        for d in sorted(server.disks, key=lambda d: d.index):
            if d.storage is None or d.storage.kind != StorageKind.SHARED:
                raise FailedPrecondition(
                    f"disk {d.id} (index {d.index}) of server {server.name} is on local storage "
                    f"{d.storage_id}; rescue mode needs every disk on shared storage",
                    state="local", reason="DISK_NOT_SHARED", metadata={"disk_id": d.id})
    elif server.status not in COLD_FROM:
        raise FailedPrecondition(
            f"server {server.name} is {server.status.value}; cold migration needs it ready "
            "(stopped)", state=server.status.value)


def check_bandwidth(value: int) -> int:
    if value < 0 or value > MAX_BANDWIDTH_MB:
        raise InvalidArgument("max_bandwidth_mb",
                              f"must be between 0 (unlimited) and {MAX_BANDWIDTH_MB}, got {value}")
    return value


def disk_plans(session: Session, server_id: str, target_host_id: str,
               proposed: list[str]) -> list[DiskPlan]:
    """Target storage per disk: shared disks stay where they are, local ones go to the
    scheduler's proposal or the target's local storage."""
    server = load_server(session, server_id)
    assert server is not None
    local = session.scalars(
        select(HostStorage.storage_id).join(Storage, Storage.id == HostStorage.storage_id)
        .where(HostStorage.host_id == target_host_id, Storage.kind == StorageKind.LOCAL)
        .order_by(HostStorage.storage_id)).first()
    plans = []
    for i, d in enumerate(sorted(server.disks, key=lambda d: d.index)):
        shared = d.storage is not None and d.storage.kind == StorageKind.SHARED
        if shared:
            sid = d.storage_id or ""
        else:
            cand = proposed[i] if i < len(proposed) else ""
            st = session.get(Storage, cand) if cand else None
            sid = cand if st is not None and st.kind == StorageKind.LOCAL else (local or "")
            if not sid:
                raise FailedPrecondition(f"host {target_host_id} has no local storage for disk "
                                         f"{d.id}", state="no_storage")
        plans.append(DiskPlan(d.id, d.index, shared, sid))
    return plans


def migration_stub(agents: AgentClients, address: str):
    agents.stub(address)  # opens (and caches) the channel
    return migration_pb2_grpc.MigrationAgentServiceStub(agents._channels[address])


async def pull_disks(agents: AgentClients, target: str, request: migration_pb2.PullDisksRequest
                     ) -> AsyncIterator[migration_pb2.PullDisksResponse]:
    """The target's PullDisks stream; transport failures become domain errors."""
    stub = migration_stub(agents, target)
    try:  # a restarted agent: let the cached channel leave its reconnect backoff first
        await asyncio.wait_for(agents._channels[target].channel_ready(), CONNECT_WAIT)
    except TimeoutError:
        pass  # the call below reports the failure
    call = stub.PullDisks(request)
    try:
        async for msg in call:
            yield msg
    except grpc.aio.AioRpcError as exc:
        raise from_rpc_error(exc, f"host agent {target}") from exc
    finally:
        call.cancel()


def progress_dict(stats: migration_pb2.MigrationStats, resumed: int) -> dict:
    total = stats.disk_bytes_total
    return {"phase": "copy", "percent": round(100.0 * stats.disk_bytes_done / total, 1)
            if total else 0.0,
            "disk_bytes_done": stats.disk_bytes_done, "disk_bytes_total": total,
            "throughput_mbps": round(stats.throughput_mbps, 2), "eta_seconds": stats.eta_seconds,
            "elapsed_ms": stats.elapsed_ms,
            "updated_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "resumed_bytes": resumed}


def set_progress(session: Session, server_id: str, progress: dict | None) -> None:
    session.execute(update(Server).where(Server.id == server_id).values(progress=progress))


class Throttle:
    def __init__(self, period: float) -> None:
        self.period, self.last = period, 0.0

    def due(self) -> bool:
        now = time.monotonic()
        if now - self.last >= self.period:
            self.last = now
            return True
        return False
