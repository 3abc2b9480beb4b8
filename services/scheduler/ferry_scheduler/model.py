"""The scheduler's domain types, free of protobuf.

`HostView` is one host as the cache holds it (built once per region update,
with its capacities precomputed); `PlacementRequest` is a validated request;
`PlacementResult` is what a placement found.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import NamedTuple


class PlacementKind(enum.IntEnum):
    """Why a server needs a host (values match `ferry.scheduler.v1.PlacementKind`)."""

    CREATE = 1
    MIGRATE = 2
    LIVE_MIGRATE = 3
    RESCUE = 4


MIGRATION_KINDS = frozenset({PlacementKind.MIGRATE, PlacementKind.LIVE_MIGRATE, PlacementKind.RESCUE})


def effective_bound(value: float) -> float:
    """A commit bound of 0 (unset) means 1.0."""
    return value if value > 0 else 1.0


@dataclass(frozen=True, slots=True)
class StorageView:
    """A storage as mounted on one host."""

    id: str
    name: str
    shared: bool
    capacity_mb: int
    free_mb: int


@dataclass(frozen=True, slots=True)
class Usage:
    """What the region says is allocated on a host."""

    cpu_used: int
    mem_used_mb: int
    server_count: int


@dataclass(frozen=True, slots=True)
class HostView:
    """One host as last reported by the region."""

    id: str
    name: str
    running: bool              # status == RUNNING
    status_name: str           # e.g. "running", "shutdown"
    online: bool               # host_status == ONLINE
    health_name: str           # e.g. "online", "offline"
    enabled: bool
    cpu_model: str
    cpu_microcode: str
    kernel_version: str
    cpu_count: int
    cpu_used: int
    cpu_cmtbound: float
    mem_size_mb: int
    mem_used_mb: int
    mem_cmtbound: float
    mem_reserved_mb: int
    storages: tuple[StorageView, ...]
    wire: str
    networks: frozenset[str]
    server_count: int
    registered_at: float       # seconds since the epoch, 0 when unknown
    # Derived once at construction: vCPUs and MiB the host may hand out in all.
    cpu_total: int = field(init=False)
    mem_total_mb: int = field(init=False)

    def __post_init__(self) -> None:
        cpu_total = math.floor(self.cpu_count * effective_bound(self.cpu_cmtbound) + 1e-9)
        mem_total = math.floor(self.mem_size_mb * effective_bound(self.mem_cmtbound) + 1e-9) \
            - self.mem_reserved_mb
        object.__setattr__(self, "cpu_total", cpu_total)
        object.__setattr__(self, "mem_total_mb", mem_total)

    @property
    def usage(self) -> Usage:
        return Usage(self.cpu_used, self.mem_used_mb, self.server_count)

    def storage(self, storage_id: str) -> StorageView | None:
        for s in self.storages:
            if s.id == storage_id:
                return s
        return None

    @property
    def label(self) -> str:
        return f"{self.name} ({self.id})" if self.name and self.name != self.id else self.id


@dataclass(frozen=True, slots=True)
class DiskRequest:
    """One disk the server needs."""

    size_mb: int
    shared: bool = False
    storage_id: str = ""


@dataclass(frozen=True, slots=True)
class PlacementRequest:
    """A validated placement request.

    `source_host_id`, `skip_cpu_check` and `skip_kernel_check` serve the
    migration filters; the v1 proto does not carry them yet, so they keep their
    defaults until the migration placement fields are added.
    """

    server_id: str
    vcpu_count: int
    memory_mb: int
    disks: tuple[DiskRequest, ...] = ()
    networks: tuple[str, ...] = ()
    kind: PlacementKind = PlacementKind.CREATE
    prefer_host: str = ""
    exclude_host_ids: frozenset[str] = frozenset()
    reservation_ttl_seconds: float = 0.0      # 0: the scheduler's default
    source_host_id: str = ""
    skip_cpu_check: bool = False
    skip_kernel_check: bool = False

    def describe(self) -> str:
        disks = sum(d.size_mb for d in self.disks)
        who = f"server {self.server_id}" if self.server_id else "server"
        return (f"{who} ({self.vcpu_count} vCPU, {self.memory_mb} MiB, "
                f"{len(self.disks)} disk(s) {disks} MiB)")


# The answer types are NamedTuples: a forecast over 10,000 hosts builds thousands of
# them, and a tuple is several times cheaper to make than a frozen dataclass.

class Rejection(NamedTuple):
    """Why one filter rejected one host."""

    filter: str
    reason: str
    message: str


class RejectedHost(NamedTuple):
    host_id: str
    host_name: str
    rejections: tuple[Rejection, ...]


class Candidate(NamedTuple):
    host_id: str
    host_name: str
    score: float
    storage_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ReservationInfo:
    id: str
    host_id: str
    expires_at: float          # seconds since the epoch


@dataclass(frozen=True, slots=True)
class PlacementResult:
    """What a placement found. `selected`/`reservation` are None when nothing fits."""

    candidates: tuple[Candidate, ...]
    rejected: tuple[RejectedHost, ...]
    selected: Candidate | None = None
    reservation: ReservationInfo | None = None
    stale_view: bool = False
