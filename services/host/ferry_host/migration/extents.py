"""What the top layer of a qcow2 disk holds: `qemu-img map --output=json`.

Only ranges present in the top layer (depth 0) are moved: data ranges are read
straight from the qcow2 file at their host offset, zero ranges (explicit zero
clusters that hide backing data) are sent as "zero". Ranges that come from the
backing image or are unallocated are not sent at all: the target has the same
backing image and a fresh overlay reads them the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..storage import _run, image_info


@dataclass(frozen=True)
class Extent:
    start: int
    length: int
    zero: bool
    #: Offset of the data in the qcow2 file; -1 when zero.
    host_offset: int


@dataclass(frozen=True)
class Layout:
    path: Path
    virtual_size: int
    format: str
    backing_file: str
    backing_format: str
    extents: tuple[Extent, ...]
    fingerprint: str

    @property
    def data_bytes(self) -> int:
        return sum(e.length for e in self.extents if not e.zero)

    @property
    def backing_image_id(self) -> str:
        return Path(self.backing_file).name if self.backing_file else ""


class UnsupportedLayout(Exception):
    """A range the reader cannot read directly (compressed or encrypted clusters)."""


async def read_layout(path: Path) -> Layout:
    info = await image_info(path)
    fmt = info.get("format", "")
    raw = await _run("map", "--output=json", "-f", fmt, str(path))
    entries = json.loads(raw)
    extents = []
    for e in entries:
        if e.get("depth", 0) != 0 or not e.get("present", e.get("data") or e.get("zero")):
            continue
        if e.get("data"):
            if "offset" not in e:
                raise UnsupportedLayout(f"{path}: range at {e['start']} has no host offset "
                                        "(compressed or encrypted)")
            extents.append(Extent(e["start"], e["length"], False, int(e["offset"])))
        elif e.get("zero"):
            extents.append(Extent(e["start"], e["length"], True, -1))
    st = os.stat(path)
    h = hashlib.sha256(raw.encode())
    h.update(f"{st.st_size}:{st.st_mtime_ns}:{info.get('virtual-size')}".encode())
    return Layout(path=path, virtual_size=int(info.get("virtual-size", 0)), format=fmt,
                  backing_file=info.get("full-backing-filename") or info.get("backing-filename", ""),
                  backing_format=info.get("backing-filename-format", ""),
                  extents=tuple(extents), fingerprint=h.hexdigest())


def chunks(extents: tuple[Extent, ...], chunk_size: int, from_offset: int = 0):
    """(extent, guest offset, length) pieces of at most chunk_size, from `from_offset` on."""
    for e in extents:
        end = e.start + e.length
        pos = max(e.start, from_offset)
        while pos < end:
            n = min(chunk_size, end - pos)
            yield e, pos, n
            pos += n
