"""Storages this host reaches and the disks on them, made with qemu-img.

A storage is a folder: `<path>/disks/<disk_id>.qcow2` holds disks and
`<path>/imagecache/<image_id>` cached images. A system disk is a qcow2 overlay
whose backing file is the cached image; a data disk is a blank qcow2. Every
file is created under a temporary name and renamed, so a failure never leaves
a partial disk behind.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from ferry_common.errors import Internal, InvalidArgument, ResourceExhausted

from .errors import HostError

log = logging.getLogger(__name__)

MIB = 1024 * 1024
QEMU_IMG = os.environ.get("FERRY_QEMU_IMG", "qemu-img")
DISK_FORMATS = ("qcow2", "raw")


class StorageError(Internal, HostError):
    """qemu-img or the file system failed on a storage; the message is qemu-img's."""

    reason = "STORAGE_FAILED"


class StorageFull(ResourceExhausted, HostError):
    """No space left on a storage."""

    reason = "STORAGE_FULL"


class StorageKind(enum.Enum):
    LOCAL = "local"
    SHARED = "shared"


@dataclass(frozen=True)
class Usage:
    capacity_mb: int
    free_mb: int


@dataclass(frozen=True)
class Storage:
    id: str
    name: str
    kind: StorageKind
    path: Path

    @property
    def disks_dir(self) -> Path:
        return self.path / "disks"

    @property
    def imagecache_dir(self) -> Path:
        return self.path / "imagecache"

    def disk_path(self, disk_id: str) -> Path:
        return self.disks_dir / f"{disk_id}.qcow2"

    def ensure_dirs(self) -> None:
        self.disks_dir.mkdir(parents=True, exist_ok=True)
        self.imagecache_dir.mkdir(parents=True, exist_ok=True)

    def usage(self) -> Usage:
        st = os.statvfs(self.path)
        return Usage(capacity_mb=st.f_blocks * st.f_frsize // MIB,
                     free_mb=st.f_bavail * st.f_frsize // MIB)


class Storages:
    """The storages of this host by id."""

    def __init__(self, storages: list[Storage]) -> None:
        self._by_id = {s.id: s for s in storages}
        for s in storages:
            s.ensure_dirs()

    def __iter__(self):
        return iter(self._by_id.values())

    def get(self, storage_id: str, field: str = "storage_id") -> Storage:
        try:
            return self._by_id[storage_id]
        except KeyError:
            known = ", ".join(sorted(self._by_id))
            raise InvalidArgument(field, f"unknown storage {storage_id!r} on this host "
                                         f"(known: {known})", reason="STORAGE_NOT_FOUND") from None

    def find(self, storage_id: str) -> Storage | None:
        return self._by_id.get(storage_id)


# ---------------------------------------------------------------- qemu-img


async def _run(*argv: str) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            QEMU_IMG, *argv, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except OSError as exc:
        raise StorageError(f"cannot run {QEMU_IMG}: {exc}") from exc
    try:
        out, err = await proc.communicate()
    except asyncio.CancelledError:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if proc.returncode != 0:
        message = (err or out).decode(errors="replace").strip()
        cls = StorageFull if "No space left" in message else StorageError
        raise cls(f"qemu-img {argv[0]} failed: {message}", metadata={"command": argv[0]})
    return out.decode(errors="replace")


async def image_info(path: Path, fmt: str | None = None) -> dict:
    """`qemu-img info` as a dict (virtual-size, format, backing-filename...)."""
    argv = ["info", "--output=json", "-U"]
    if fmt:
        argv += ["-f", fmt]
    return json.loads(await _run(*argv, str(path)))


def _temp_name(path: Path) -> Path:
    return path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"


async def _create_atomic(path: Path, argv_before_path: list[str], size_mb: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        await _run(*argv_before_path, str(tmp), f"{size_mb}M")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


async def create_overlay(path: Path, backing: Path, backing_format: str, size_mb: int,
                         *, field: str = "size_mb") -> None:
    """A qcow2 overlay over `backing`, grown to `size_mb` (never smaller than the image)."""
    if backing_format not in DISK_FORMATS:
        raise InvalidArgument(field.rsplit(".", 1)[0] + ".image_format",
                              f"must be one of {', '.join(DISK_FORMATS)}")
    info = await image_info(backing, backing_format)
    virtual_mb = -(-int(info.get("virtual-size", 0)) // MIB)
    if size_mb < virtual_mb:
        raise InvalidArgument(field, f"{size_mb} MiB is smaller than the image's virtual size "
                                     f"{virtual_mb} MiB")
    await _create_atomic(path, ["create", "-q", "-f", "qcow2", "-b", str(backing.resolve()),
                                "-F", backing_format], size_mb)


async def create_blank(path: Path, size_mb: int) -> None:
    """A blank qcow2 data disk."""
    await _create_atomic(path, ["create", "-q", "-f", "qcow2"], size_mb)


def allocated_bytes(path: Path) -> int:
    try:
        return os.stat(path).st_blocks * 512
    except FileNotFoundError:
        return 0


def delete_disk(path: Path) -> bool:
    """Removes a disk file; True if it existed."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    log.info("deleted disk %s", path)
    return True

