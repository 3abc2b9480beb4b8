"""Live migration, region side: calls to the agents' MigrationAgentService,
progress kept on the server row, cancel requests."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from ferry_common.errors import Unavailable, from_rpc_error
from ferry_proto.host.v1 import migration_pb2 as mpb
from ferry_proto.host.v1 import migration_pb2_grpc
from sqlalchemy import update
from sqlalchemy.orm import Session

from ..clients.host_agent import AgentClients
from ..db.engine import affected
from ..db.models import Server

PHASES = {
    mpb.MIGRATION_PHASE_UNSPECIFIED: "starting",
    mpb.MIGRATION_PHASE_MIRROR: "mirror",
    mpb.MIGRATION_PHASE_MEMORY: "memory",
    mpb.MIGRATION_PHASE_SWITCHOVER: "switchover",
    mpb.MIGRATION_PHASE_COMPLETED: "completed",
    mpb.MIGRATION_PHASE_FAILED: "failed",
    mpb.MIGRATION_PHASE_COPY: "copy",
}

UNAVAILABLE_RETRY_S = 10.0

class LiveAgents:
    """MigrationAgentService stubs over the AgentClients' channels."""

    def __init__(self, agents: AgentClients) -> None:
        self.agents = agents
        self._stubs: dict[str, migration_pb2_grpc.MigrationAgentServiceStub] = {}

    @classmethod
    def of(cls, agents: AgentClients) -> LiveAgents:
        return agents.__dict__.setdefault("_live_agents", cls(agents))

    def stub(self, address: str) -> migration_pb2_grpc.MigrationAgentServiceStub:
        stub = self._stubs.get(address)
        if stub is None:
            self.agents.stub(address)  # opens (and caches) the channel
            channel = self.agents._channels[address]
            stub = self._stubs[address] = migration_pb2_grpc.MigrationAgentServiceStub(channel)
        return stub

    async def call(self, address: str, method: str, request, timeout: float, *,
                   retry_for: float = UNAVAILABLE_RETRY_S) -> Any:
        """A unary call; every MigrationAgentService call is idempotent, so an agent
        that is briefly unreachable (restarting, channel in back-off) is retried."""
        deadline = time.monotonic() + retry_for
        delay = 0.2
        while True:
            try:
                return await getattr(self.stub(address), method)(request, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                err = from_rpc_error(exc, f"host agent {address}")
                if not isinstance(err, Unavailable) or time.monotonic() + delay > deadline:
                    raise err from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def migrate(self, address: str, request: mpb.MigrateGuestRequest,
                      timeout: float) -> AsyncIterator[mpb.MigrateGuestResponse]:
        call = self.stub(address).MigrateGuest(request, timeout=timeout)
        try:
            async for msg in call:
                yield msg
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, f"host agent {address}") from exc
        finally:
            call.cancel()


def progress_dict(stats: mpb.MigrationStats) -> dict[str, Any]:
    disk_total, mem_total = stats.disk_bytes_total, stats.memory_bytes_total
    phase = PHASES.get(stats.phase, "unknown")
    if phase == "completed":
        percent = 100.0
    elif phase in ("memory", "switchover") and mem_total:
        done = max(0, mem_total - stats.memory_bytes_remaining) if stats.iteration else \
            min(stats.memory_bytes_transferred, mem_total)
        percent = (50.0 if disk_total else 0.0) + (50.0 if disk_total else 100.0) * done / mem_total
    elif phase == "mirror" and disk_total:
        percent = 50.0 * stats.disk_bytes_done / disk_total
    else:
        percent = 0.0
    return {
        "phase": phase, "percent": round(min(percent, 100.0), 1),
        "disk_bytes_done": stats.disk_bytes_done, "disk_bytes_total": disk_total,
        "memory_bytes_transferred": stats.memory_bytes_transferred,
        "memory_bytes_remaining": stats.memory_bytes_remaining, "memory_bytes_total": mem_total,
        "dirty_pages_rate": stats.dirty_pages_rate, "iteration": stats.iteration,
        "throughput_mbps": stats.throughput_mbps,
        "expected_downtime_ms": stats.expected_downtime_ms,
        "downtime_limit_ms": stats.downtime_limit_ms,
        "cpu_throttle_percent": stats.cpu_throttle_percent, "eta_seconds": stats.eta_seconds,
        "elapsed_ms": stats.elapsed_ms,
        "updated_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
    }


def store_progress(session: Session, server_id: str, task_id: str,
                   progress: dict[str, Any] | None) -> bool:
    """Writes the latest progress while `task_id` still holds the server."""
    return affected(session, update(Server)
                    .where(Server.id == server_id, Server.task_id == task_id)
                    .values(progress=progress)
                    .execution_options(synchronize_session=False)) == 1
