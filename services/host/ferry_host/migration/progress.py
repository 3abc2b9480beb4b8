"""Progress samples of a live migration, from `query-migrate` and `query-block-jobs`."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from ferry_proto.host.v1 import migration_pb2 as pb


class Phase(enum.Enum):
    """Where an outgoing migration is; the proto phase of each member is its value."""

    STARTING = pb.MIGRATION_PHASE_UNSPECIFIED
    MIRROR = pb.MIGRATION_PHASE_MIRROR
    MEMORY = pb.MIGRATION_PHASE_MEMORY
    SWITCHOVER = pb.MIGRATION_PHASE_SWITCHOVER
    COMPLETED = pb.MIGRATION_PHASE_COMPLETED
    FAILED = pb.MIGRATION_PHASE_FAILED


@dataclass
class Sample:
    phase: Phase = Phase.STARTING
    disk_done: int = 0
    disk_total: int = 0
    mem_transferred: int = 0
    mem_remaining: int = 0
    mem_total: int = 0
    dirty_rate: int = 0
    iteration: int = 0
    mbps: float = 0.0
    expected_downtime_ms: int = 0
    downtime_limit_ms: int = 0
    throttle: int = 0
    eta_seconds: int = -1
    elapsed_ms: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def progress_key(self) -> int:
        """Grows while anything moves (used by the stall detector)."""
        return self.disk_done + self.mem_transferred

    def to_proto(self) -> pb.MigrationStats:
        return pb.MigrationStats(
            phase=self.phase.value, disk_bytes_done=self.disk_done,
            disk_bytes_total=self.disk_total, memory_bytes_transferred=self.mem_transferred,
            memory_bytes_remaining=self.mem_remaining, memory_bytes_total=self.mem_total,
            dirty_pages_rate=self.dirty_rate, iteration=self.iteration, throughput_mbps=self.mbps,
            expected_downtime_ms=self.expected_downtime_ms,
            downtime_limit_ms=self.downtime_limit_ms, cpu_throttle_percent=self.throttle,
            eta_seconds=self.eta_seconds, elapsed_ms=self.elapsed_ms)


def disk_figures(jobs: list[dict[str, Any]]) -> tuple[int, int]:
    done = sum(int(j.get("offset", 0)) for j in jobs)
    total = sum(int(j.get("len", 0)) for j in jobs)
    return done, total


def apply_query_migrate(sample: Sample, info: dict[str, Any]) -> None:
    """Fills the memory figures of `sample` from a `query-migrate` answer."""
    ram = info.get("ram") or {}
    sample.mem_transferred = int(ram.get("transferred", sample.mem_transferred))
    sample.mem_remaining = int(ram.get("remaining", sample.mem_remaining))
    sample.mem_total = int(ram.get("total", sample.mem_total))
    sample.dirty_rate = int(ram.get("dirty-pages-rate", 0))
    sample.iteration = int(ram.get("dirty-sync-count", sample.iteration))
    sample.mbps = float(ram.get("mbps", 0.0))
    sample.expected_downtime_ms = int(info.get("expected-downtime", 0))
    sample.throttle = int(info.get("cpu-throttle-percentage", 0))
    bps = sample.mbps * 1e6 / 8
    if bps > 0 and sample.mem_remaining >= 0:
        sample.eta_seconds = int(sample.mem_remaining / bps) + 1
    else:
        sample.eta_seconds = -1
