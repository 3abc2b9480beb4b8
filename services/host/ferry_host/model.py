"""The host agent's domain model of a guest, independent of protobuf.

`GuestDef` is what the region asked for (stored as `spec.json`); `GuestView`
is what the agent reports. `validate()` checks a definition against this
host and names the offending request field on failure.
"""

from __future__ import annotations

import enum
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from ferry_common.errors import InvalidArgument

# Ids become file names and QEMU option values: a safe alphabet only
# (the driver's own rule for guest ids, applied to every id here).
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
IMAGE_FORMATS = ("qcow2", "raw")
MAX_VCPUS = 255
MIN_MEMORY_MB = 16
MAX_MEMORY_MB = 4 * 1024 * 1024
MAX_DISK_MB = 64 * 1024 * 1024
MAX_DISKS = 16
MAX_NICS = 8


class GuestState(enum.Enum):
    STOPPED = "stopped"
    RUNNING = "running"
    PAUSED = "paused"
    INCOMING = "incoming"


@dataclass(frozen=True)
class DiskDef:
    disk_id: str
    index: int
    storage_id: str
    size_mb: int
    image_id: str = ""
    image_checksum_sha256: str = ""
    image_format: str = ""


@dataclass(frozen=True)
class NicDef:
    network: str
    mac: str
    index: int


@dataclass(frozen=True)
class GuestDef:
    guest_id: str
    name: str
    vcpu_count: int
    memory_mb: int
    disks: tuple[DiskDef, ...]
    nics: tuple[NicDef, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> GuestDef:
        return cls(guest_id=d["guest_id"], name=d["name"], vcpu_count=int(d["vcpu_count"]),
                   memory_mb=int(d["memory_mb"]),
                   disks=tuple(DiskDef(**x) for x in d.get("disks", ())),
                   nics=tuple(NicDef(**x) for x in d.get("nics", ())))


@dataclass(frozen=True)
class DiskView:
    disk_id: str
    storage_id: str
    path: Path
    size_mb: int
    allocated_bytes: int


@dataclass(frozen=True)
class GuestView:
    guest_id: str
    state: GuestState
    run_state: str = ""
    pid: int = 0
    disks: tuple[DiskView, ...] = ()
    accelerator: str = ""  # "kvm" / "tcg"; "" if never started here
    name: str = ""


def check_id(field_name: str, value: str) -> str:
    if not value:
        raise InvalidArgument(field_name, "must not be empty")
    if not ID_RE.match(value):
        raise InvalidArgument(field_name, "must be 1-64 characters of letters, digits, '.', '_' "
                                          "or '-', starting with a letter or digit")
    return value


def _range(field_name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise InvalidArgument(field_name, f"must be between {low} and {high}, got {value}")


@dataclass
class HostLimits:
    """What the definition is checked against: this host's storages and networks."""

    storage_ids: frozenset[str]
    networks: frozenset[str]


def validate(d: GuestDef, limits: HostLimits, prefix: str = "spec") -> GuestDef:
    """Checks every field; raises InvalidArgument naming the first bad one."""
    check_id(f"{prefix}.guest_id", d.guest_id)
    if not d.name:
        raise InvalidArgument(f"{prefix}.name", "must not be empty")
    if len(d.name) > 128 or not d.name.isprintable():
        raise InvalidArgument(f"{prefix}.name", "must be at most 128 printable characters")
    _range(f"{prefix}.vcpu_count", d.vcpu_count, 1, MAX_VCPUS)
    _range(f"{prefix}.memory_mb", d.memory_mb, MIN_MEMORY_MB, MAX_MEMORY_MB)
    if not d.disks:
        raise InvalidArgument(f"{prefix}.disks", "a guest needs at least one disk")
    if len(d.disks) > MAX_DISKS:
        raise InvalidArgument(f"{prefix}.disks", f"at most {MAX_DISKS} disks")
    seen_ids: set[str] = set()
    seen_idx: set[int] = set()
    for i, disk in enumerate(d.disks):
        f = f"{prefix}.disks[{i}]"
        check_id(f"{f}.disk_id", disk.disk_id)
        if disk.disk_id in seen_ids:
            raise InvalidArgument(f"{f}.disk_id", f"duplicate disk id {disk.disk_id!r}")
        seen_ids.add(disk.disk_id)
        _range(f"{f}.index", disk.index, 0, MAX_DISKS - 1)
        if disk.index in seen_idx:
            raise InvalidArgument(f"{f}.index", f"duplicate disk index {disk.index}")
        seen_idx.add(disk.index)
        if not disk.storage_id:
            raise InvalidArgument(f"{f}.storage_id", "must not be empty")
        if disk.storage_id not in limits.storage_ids:
            raise InvalidArgument(f"{f}.storage_id",
                                  f"unknown storage {disk.storage_id!r} on this host (known: "
                                  f"{', '.join(sorted(limits.storage_ids))})",
                                  reason="STORAGE_NOT_FOUND")
        _range(f"{f}.size_mb", disk.size_mb, 1, MAX_DISK_MB)
        if disk.image_id:
            check_id(f"{f}.image_id", disk.image_id)
            if disk.image_format not in IMAGE_FORMATS:
                raise InvalidArgument(f"{f}.image_format",
                                      f"must be one of {', '.join(IMAGE_FORMATS)}, "
                                      f"got {disk.image_format!r}")
            if disk.image_checksum_sha256 and not SHA256_RE.match(disk.image_checksum_sha256):
                raise InvalidArgument(f"{f}.image_checksum_sha256",
                                      "must be 64 lowercase hexadecimal characters")
        elif disk.image_format or disk.image_checksum_sha256:
            raise InvalidArgument(f"{f}.image_id", "must be set when an image format or "
                                                   "checksum is given")
    if 0 not in seen_idx:
        raise InvalidArgument(f"{prefix}.disks", "one disk must have index 0 (the boot disk)")
    if len(d.nics) > MAX_NICS:
        raise InvalidArgument(f"{prefix}.nics", f"at most {MAX_NICS} NICs")
    macs: set[str] = set()
    for i, nic in enumerate(d.nics):
        f = f"{prefix}.nics[{i}]"
        if nic.network not in limits.networks:
            raise InvalidArgument(f"{f}.network", f"network {nic.network!r} is not on this "
                                                  f"host (has: {', '.join(sorted(limits.networks))})")
        if not MAC_RE.match(nic.mac):
            raise InvalidArgument(f"{f}.mac", f"{nic.mac!r} is not a MAC like 52:54:00:12:34:56")
        if int(nic.mac[:2], 16) & 1:
            raise InvalidArgument(f"{f}.mac", f"{nic.mac} is a multicast address")
        if nic.mac in macs:
            raise InvalidArgument(f"{f}.mac", f"duplicate MAC {nic.mac}")
        macs.add(nic.mac)
    return d
