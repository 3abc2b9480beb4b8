"""Serial console logs: the tail of a log, and following one as it grows.

QEMU appends the guest's COM1 output to `<state-dir>/guests/<id>/serial.log`.
Only complete lines are returned (a line ends with "\\n"; a trailing "\\r" is
dropped), and offsets always point just past the last complete line returned,
so following from a tail's `next_offset` neither skips nor repeats a byte.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from ferry_common.errors import InvalidArgument

BLOCK = 64 * 1024
MAX_LINE = 64 * 1024        # a longer run without a newline is cut into a line
MAX_READ = 1024 * 1024      # bytes read per poll
POLL_INTERVAL = 0.1


def _decode(raw: bytes) -> str:
    return raw.rstrip(b"\r").decode("utf-8", errors="replace")


def _split(data: bytes) -> tuple[list[str], int]:
    """Complete lines in `data` and how many bytes they take."""
    end = data.rfind(b"\n") + 1
    if end == 0:
        return [], 0
    return [_decode(x) for x in data[:end - 1].split(b"\n")], end


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _line_start_before(f, size: int) -> int:
    """Offset just past the last newline in the first `size` bytes (0 if none)."""
    pos = size
    while pos > 0:
        start = max(0, pos - BLOCK)
        f.seek(start)
        chunk = f.read(pos - start)
        i = chunk.rfind(b"\n")
        if i >= 0:
            return start + i + 1
        pos = start
        if size - pos > MAX_LINE:
            return size  # an endless line: start at the end
    return 0


def tail(path: Path, count: int) -> tuple[list[str], int]:
    """The last `count` complete lines and the offset just past them."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return [], 0
    with f:
        size = os.fstat(f.fileno()).st_size
        end = _line_start_before(f, size)
        pos, data = end, b""
        while pos > 0 and data.count(b"\n") <= count:
            start = max(0, pos - BLOCK)
            f.seek(start)
            data = f.read(pos - start) + data
            pos = start
        lines, _ = _split(data)
        return lines[-count:] if count else [], end


async def follow(path: Path, offset: int, *, alive: Callable[[], bool] = lambda: True,
                 poll_interval: float = POLL_INTERVAL,
                 ) -> AsyncIterator[tuple[list[str], int]]:
    """Yields (complete lines, offset past them) as the log grows.

    `offset` -1 starts at the current end (at the start of an unfinished last
    line, so that line comes out whole). The log may not exist yet (a guest
    never started): it is waited for. A log that shrinks (replaced) is read
    again from 0. Ends when `alive()` turns false (the guest was deleted).
    """
    if offset < -1:
        raise InvalidArgument("offset", f"must be -1 or a byte offset >= 0, got {offset}")
    size = _size(path)
    if offset > size:
        raise InvalidArgument("offset", f"{offset} is beyond the end of the log ({size} bytes)")
    f = None
    ino = None
    pos = offset
    try:
        while True:
            if f is None:
                try:
                    f = open(path, "rb")  # noqa: SIM115 - closed in finally
                    ino = os.fstat(f.fileno()).st_ino
                except FileNotFoundError:
                    f = None
            if f is not None:
                st = os.fstat(f.fileno())
                if pos == -1:
                    pos = _line_start_before(f, st.st_size)
                if st.st_size < pos:
                    pos = 0  # truncated
                if st.st_size > pos:
                    f.seek(pos)
                    data = f.read(MAX_READ)
                    lines, used = _split(data)
                    if not used and len(data) >= MAX_LINE:
                        lines, used = [_decode(data[:MAX_LINE])], MAX_LINE
                    if used:
                        pos += used
                        yield lines, pos
                        continue  # more may be waiting: read again at once
                try:
                    if os.stat(path).st_ino != ino:
                        f.close()
                        f, pos = None, 0  # replaced: read the new file from its start
                        continue
                except FileNotFoundError:
                    pass
            elif pos == -1:
                pos = 0
            if not alive():
                return
            await asyncio.sleep(poll_interval)
    finally:
        if f is not None:
            f.close()
