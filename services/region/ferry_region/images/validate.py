"""Checks that an uploaded file is a safe, valid image of its declared format.

qcow2: the header must say qcow2 with no backing file (a backing file would let
an image read any file on the hosts), `qemu-img info -f qcow2` must agree (no
backing file, no external data file) and `qemu-img check` must be clean.
raw: non-empty, a whole number of 512-byte sectors, and an MBR boot signature
0x55AA at offset 510. The format is always given to qemu-img (-f), never probed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidImage
from ..states import DiskFormat

log = logging.getLogger(__name__)

QEMU_IMG = os.environ.get("FERRY_QEMU_IMG", "qemu-img")
QCOW2_MAGIC = b"QFI\xfb"
MIB = 1024 * 1024


@dataclass(frozen=True)
class ImageFacts:
    size_bytes: int
    virtual_size_bytes: int

    @property
    def virtual_size_mb(self) -> int:
        return max(1, -(-self.virtual_size_bytes // MIB))


async def _run(*argv: str, timeout: float = 120.0) -> tuple[int, str, str]:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
    except FileNotFoundError as exc:
        raise RuntimeError(f"{argv[0]} is not installed") from exc
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


def _read_head(path: Path, n: int) -> bytes:
    with path.open("rb") as f:
        return f.read(n)


async def _qcow2(path: Path, size: int) -> ImageFacts:
    head = _read_head(path, 512)
    if len(head) < 72 or head[:4] != QCOW2_MAGIC:
        raise InvalidImage("is not a qcow2 image (bad magic)")
    version, backing_offset = struct.unpack(">IQ", head[4:16])
    if version not in (2, 3):
        raise InvalidImage(f"unsupported qcow2 version {version}")
    if backing_offset != 0:
        raise InvalidImage("qcow2 images with a backing file are not accepted",
                           field="chunk")
    rc, out, err = await _run(QEMU_IMG, "info", "-f", "qcow2", "--output=json", str(path))
    if rc != 0:
        raise InvalidImage(f"qemu-img info rejected it: {err.strip()[:300]}")
    try:
        info = json.loads(out)
    except ValueError as exc:
        raise InvalidImage("qemu-img info gave no JSON") from exc
    if info.get("format") != "qcow2":
        raise InvalidImage(f"format is {info.get('format')!r}, not qcow2")
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise InvalidImage("qcow2 images with a backing file are not accepted")
    specific = (info.get("format-specific") or {}).get("data") or {}
    if specific.get("data-file"):
        raise InvalidImage("qcow2 images with an external data file are not accepted")
    rc, out, err = await _run(QEMU_IMG, "check", "-f", "qcow2", str(path))
    if rc != 0:
        raise InvalidImage(f"qemu-img check is not clean (exit {rc}): "
                           f"{(err or out).strip()[:300]}")
    vsize = int(info.get("virtual-size") or 0)
    if vsize <= 0:
        raise InvalidImage("qcow2 image has no virtual size")
    return ImageFacts(size, vsize)


async def _raw(path: Path, size: int) -> ImageFacts:
    if size == 0:
        raise InvalidImage("raw image is empty")
    if size % 512:
        raise InvalidImage(f"raw image size {size} is not a multiple of 512 bytes")
    head = _read_head(path, 512)
    if head[510:512] != b"\x55\xaa":
        raise InvalidImage("raw image has no boot signature 0x55AA at offset 510")
    return ImageFacts(size, size)


async def inspect(path: Path, fmt: DiskFormat) -> ImageFacts:
    """Validates `path` as `fmt`; raises InvalidImage (INVALID_ARGUMENT) when it is not."""
    size = path.stat().st_size
    if fmt == DiskFormat.QCOW2:
        return await _qcow2(path, size)
    if fmt == DiskFormat.RAW:
        return await _raw(path, size)
    raise InvalidImage(f"unsupported format {fmt}", field="metadata.format")
