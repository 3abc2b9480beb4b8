"""What a cold copy sends: the allocated ranges of the disk file itself.

The guest is stopped, so its qcow2 file is copied as a file: the header, the
tables and the data clusters, exactly where they are, and nothing where the
file has holes (SEEK_DATA/SEEK_HOLE). A 10 GiB qcow2 holding 100 MiB is a
file of about 100 MiB. The backing image is not part of it: the target points
the copy at the same image from its own cache (`qemu-img rebase -u`), so a
template is neither sent nor flattened.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ferry_common.errors import FailedPrecondition

from ..errors import HostError


@dataclass(frozen=True)
class FileMap:
    path: Path
    file_size: int
    #: (offset, length) of every allocated range, in file order.
    ranges: tuple[tuple[int, int], ...]
    fingerprint: str

    @property
    def data_bytes(self) -> int:
        return sum(n for _, n in self.ranges)

    def bytes_from(self, offset: int) -> int:
        """Data bytes at or after `offset`: what a copy resumed there still receives."""
        return sum(max(0, min(n, start + n - offset)) for start, n in self.ranges)


@dataclass(frozen=True)
class DiskFile:
    map: FileMap
    virtual_size: int
    format: str
    backing_file: str

    @property
    def backing_image_id(self) -> str:
        return Path(self.backing_file).name if self.backing_file else ""


def allocated_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole up to the end
                break
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        if end > start:
            ranges.append((start, end - start))
        pos = end
    return ranges


def map_file(path: Path) -> FileMap:
    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        ranges = allocated_ranges(fd, st.st_size)
    finally:
        os.close(fd)
    return FileMap(path, st.st_size, tuple(ranges), fingerprint(st, ranges))


def fingerprint(st: os.stat_result, ranges) -> str:
    h = hashlib.sha256(f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:"
                       f"{st.st_ctime_ns}".encode())
    h.update(repr(list(ranges)).encode())
    return h.hexdigest()


def unchanged(m: FileMap) -> bool:
    """True when the file still is what `m` describes (checked after a copy was sent)."""
    try:
        fd = os.open(m.path, os.O_RDONLY)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        return fingerprint(st, allocated_ranges(fd, st.st_size)) == m.fingerprint
    finally:
        os.close(fd)


QCOW2_MAGIC = b"QFI\xfb"
_QCOW2_HEADER = struct.Struct(">4sIQIIQ")  # magic, version, backing offset+size, cluster bits, size
_EXTERNAL_DATA_FILE = 1 << 2  # incompatible feature: the data lives in another file


class UnsupportedDisk(FailedPrecondition, HostError):
    reason = "UNSUPPORTED_DISK"


def read_header(path: Path) -> DiskFile:
    """Format, virtual size and backing file from the file's own header: no qemu-img
    process per disk (ExportDisk is on the path of every cold migration)."""
    with open(path, "rb") as f:
        head = f.read(4096)
        if head[:4] != QCOW2_MAGIC:
            size = os.fstat(f.fileno()).st_size
            return DiskFile(map_file(path), size, "raw", "")
        if len(head) < 104:
            raise UnsupportedDisk(f"{path}: truncated qcow2 header", state="BAD_IMAGE")
        _, version, boff, bsize, _, vsize = _QCOW2_HEADER.unpack_from(head)
        if version >= 3 and struct.unpack_from(">Q", head, 72)[0] & _EXTERNAL_DATA_FILE:
            raise UnsupportedDisk(f"{path}: qcow2 with an external data file",
                                  state="EXTERNAL_DATA_FILE")
        backing = ""
        if boff:
            f.seek(boff)
            backing = f.read(bsize).decode(errors="replace")
    return DiskFile(map_file(path), vsize, "qcow2", backing)


async def describe(path: Path) -> DiskFile:
    return await asyncio.to_thread(read_header, path)


def chunks(ranges, chunk_size: int, from_offset: int = 0) -> Iterator[tuple[int, int]]:
    """(file offset, length) pieces of at most chunk_size, from `from_offset` on."""
    for start, n in ranges:
        end = start + n
        pos = max(start, from_offset)
        while pos < end:
            k = min(chunk_size, end - pos)
            yield pos, k
            pos += k
