"""Source side of a cold disk copy: the top layer's ranges, each with its SHA-256.

The guest is stopped, so the qcow2 file does not change while it is read; data
ranges are read with pread at the host offsets `qemu-img map` reports.
Test hooks: a file `<state-dir>/faults/corrupt-read-once` makes the next data
chunk go out with one flipped byte (after hashing), then disappears;
`corrupt-read-always` corrupts every data chunk while it exists.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

from ferry_common.errors import FailedPrecondition, InvalidArgument
from ferry_proto.host.v1 import migration_pb2 as pb

from ..model import GuestState
from .bandwidth import TokenBucket
from .extents import chunks, read_layout

log = logging.getLogger(__name__)

KIB = 1024
DEFAULT_CHUNK = 4 * 1024 * KIB
MIN_CHUNK, MAX_CHUNK = 64 * KIB, 8 * 1024 * KIB


@functools.lru_cache(maxsize=16)
def zero_sha256(length: int) -> str:
    h = hashlib.sha256()
    block = bytes(min(length, 1 << 20))
    left = length
    while left > 0:
        n = min(left, len(block))
        h.update(block[:n])
        left -= n
    return h.hexdigest()


def _read(fd: int, offset: int, length: int) -> tuple[bytes, str]:
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise OSError(f"short read at {offset}: {len(data)} of {length} bytes")
    return data, hashlib.sha256(data).hexdigest()


async def read_disk(agent, request: pb.ReadDiskRequest) -> AsyncIterator[pb.ReadDiskResponse]:
    guests = agent.guests
    chunk = request.chunk_size or DEFAULT_CHUNK
    if not MIN_CHUNK <= chunk <= MAX_CHUNK:
        raise InvalidArgument("chunk_size", f"must be between {MIN_CHUNK} and {MAX_CHUNK}")
    if request.offset < 0:
        raise InvalidArgument("offset", "must not be negative")
    if request.max_bandwidth_mb < 0:
        raise InvalidArgument("max_bandwidth_mb", "must not be negative")
    view = await guests.get(request.guest_id)
    if view.state is not GuestState.STOPPED:
        raise FailedPrecondition(f"guest {request.guest_id} is {view.state.name}; a cold copy "
                                 "needs it stopped", state=view.state.name)
    disk = next((d for d in guests._record(request.guest_id).definition.disks
                 if d.disk_id == request.disk_id), None)
    if disk is None:
        raise InvalidArgument("disk_id", f"guest {request.guest_id} has no disk {request.disk_id}")
    path = guests.disk_path(disk)
    layout = await read_layout(path)
    yield pb.ReadDiskResponse(layout=pb.DiskLayout(
        virtual_size=layout.virtual_size, format=layout.format,
        backing_image_id=layout.backing_image_id, data_bytes=layout.data_bytes,
        fingerprint=layout.fingerprint))
    bucket = TokenBucket(request.max_bandwidth_mb)
    fault = Path(agent.config.state_dir) / "faults" / "corrupt-read-once"
    always = fault.with_name("corrupt-read-always")
    fd = os.open(path, os.O_RDONLY)
    ahead: asyncio.Task | None = None
    try:
        pieces = [p for p in chunks(layout.extents, chunk, request.offset)]
        data_at = [i for i, (ext, _, _) in enumerate(pieces) if not ext.zero]

        def start(i: int) -> asyncio.Task:
            ext, pos, n = pieces[i]
            return asyncio.ensure_future(
                asyncio.to_thread(_read, fd, ext.host_offset + pos - ext.start, n))

        nxt = iter(data_at)
        first = next(nxt, None)
        ahead = start(first) if first is not None else None
        for i, (ext, pos, n) in enumerate(pieces):
            if ext.zero:
                yield pb.ReadDiskResponse(offset=pos, length=n, zero=True,
                                          sha256=zero_sha256(n))
                continue
            await bucket.take(n)
            assert ahead is not None
            data, digest = await ahead
            following = next(nxt, None)  # read the next chunk while this one is sent
            ahead = start(following) if following is not None else None
            if fault.exists() or always.exists():
                fault.unlink(missing_ok=True)
                log.warning("fault injection: corrupting the chunk at %d of disk %s", pos,
                            request.disk_id)
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            yield pb.ReadDiskResponse(offset=pos, length=n, data=data, sha256=digest)
    finally:
        if ahead is not None:
            ahead.cancel()
            await asyncio.gather(ahead, return_exceptions=True)
        os.close(fd)
