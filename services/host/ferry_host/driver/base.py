"""The guest driver boundary: what the host agent needs from a hypervisor.

The agent (and the migration code) talk to `GuestDriver` only; `QmpDriver`
is the QEMU implementation.  Guests outlive the agent process: an agent
restart re-attaches with `adopt()` and never stops a guest by itself.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from ferry_host.errors import InvalidGuestSpec

# Guest ids end up in file names and in QEMU's option syntax (where a comma
# separates options), so they are restricted to a safe alphabet.
GUEST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Accel(StrEnum):
    KVM = "kvm"
    TCG = "tcg"


class DiskBus(StrEnum):
    VIRTIO = "virtio"
    IDE = "ide"


@dataclass(frozen=True)
class DiskSpec:
    path: Path
    format: str = "qcow2"  # "qcow2" or "raw"
    bus: DiskBus = DiskBus.VIRTIO
    index: int = 0  # index 0 is the boot disk; node name is drive-<index>


@dataclass(frozen=True)
class NicSpec:
    mac: str
    # Host tap device to plug into; None gives an isolated user-mode NIC
    # (restrict=on: the guest can reach neither the host nor the outside).
    ifname: str | None = None
    model: str = "virtio-net-pci"


@dataclass(frozen=True)
class GuestSpec:
    id: str
    name: str
    vcpus: int
    memory_mb: int
    disks: list[DiskSpec]
    serial_log: Path
    nics: list[NicSpec] = field(default_factory=list)
    accel: Accel = Accel.TCG
    machine: str = "pc"
    # None: the driver's default for the accelerator ("qemu64" under TCG,
    # the probed KVM model under KVM).  Must match on both migration ends.
    cpu_model: str | None = None

    def validate(self) -> None:
        if not GUEST_ID_RE.match(self.id):
            raise InvalidGuestSpec("id", f"{self.id!r} must match {GUEST_ID_RE.pattern}")
        if self.vcpus < 1:
            raise InvalidGuestSpec("vcpus", "must be >= 1")
        if self.memory_mb < 16:
            raise InvalidGuestSpec("memory_mb", "must be >= 16")
        if not self.disks:
            raise InvalidGuestSpec("disks", "a guest needs at least one disk")
        indexes = [d.index for d in self.disks]
        if len(set(indexes)) != len(indexes) or min(indexes) < 0:
            raise InvalidGuestSpec("disks", f"indexes must be unique and >= 0: {indexes}")
        for disk in self.disks:
            if disk.format not in ("qcow2", "raw"):
                raise InvalidGuestSpec("disks.format", f"{disk.format!r} is not qcow2 or raw")
            if disk.bus == DiskBus.IDE and disk.index > 3:
                raise InvalidGuestSpec("disks.index", "the pc machine has 4 IDE slots (0..3)")


@dataclass(frozen=True)
class GuestRuntime:
    guest_id: str
    pid: int
    qmp_socket: Path
    # QEMU's run state from query-status: "running", "paused", "inmigrate",
    # "postmigrate", "shutdown", "internal-error", ...
    run_state: str


class GuestDriver(ABC):
    @abstractmethod
    async def start(self, spec: GuestSpec, incoming: str | None = None) -> GuestRuntime:
        """Start a guest.  With `incoming` (e.g. "defer") it waits, paused,
        for a migration stream instead of booting."""

    @abstractmethod
    async def stop(self, guest_id: str, timeout: float = 10.0) -> bool:
        """End the guest's process: QMP quit, then SIGTERM, then SIGKILL.

        Bounded in time and idempotent: False if nothing was running."""

    @abstractmethod
    async def status(self, guest_id: str) -> GuestRuntime | None:
        """The guest's run state, or None if it is not running here."""

    @abstractmethod
    async def adopt(self, guest_id: str) -> GuestRuntime | None:
        """Re-attach to a guest started by an earlier agent process."""

    @abstractmethod
    async def qmp(self, guest_id: str, cmd: str, **args: Any) -> Any:
        """Run a raw QMP command (hyphenated arguments via `**{"a-b": 1}`)."""

    @abstractmethod
    def listener(
        self, guest_id: str, names: tuple[str, ...] = ()
    ) -> AbstractContextManager[AsyncIterator[Mapping[str, Any]]]:
        """Context manager yielding QMP events (all, or only `names`) from
        the moment it is entered."""

    @abstractmethod
    def list_running(self) -> list[str]:
        """Ids of the guests whose QEMU is alive, attached or not."""

    @abstractmethod
    async def detach_all(self) -> None:
        """Drop every QMP link without stopping any guest (agent shutdown)."""
