"""Target side of the data channel: frames into the partial copy, each one verified.

Runs in a worker thread, blocking. Over plain TCP the payload moves from the
socket into the file with splice (no copy through Python) and is hashed from
the page cache through a short-lived read-only mapping; over TLS it is read
into a buffer, hashed, then written. Writeback of each chunk starts at once
(sync_file_range) so the final fdatasync has little left to do.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import mmap
import os
import socket
import threading
from collections.abc import Callable

from ferry_common.errors import Internal

from ..errors import HostError
from ..storage import StorageFull
from . import wire
from .bandwidth import Pacer

log = logging.getLogger(__name__)

PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = 1031
SYNC_FILE_RANGE_WRITE = 2
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)

_libc = ctypes.CDLL(None, use_errno=True)
_sync_file_range = getattr(_libc, "sync_file_range", None)
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]


class ChecksumMismatch(Internal, HostError):
    reason = "CHECKSUM_MISMATCH"


def start_writeback(fd: int, offset: int, length: int) -> None:
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)


def _write_error(exc: OSError, what: str) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"no space left writing {what}")
    return Internal(f"writing {what} failed: {exc}")


class Receiver:
    """Reads one answer of the source; `on_chunk(offset, length)` after each verified chunk."""

    def __init__(self, sock: socket.socket, fd: int, disk: str, *, use_splice: bool,
                 on_chunk: Callable[[int, int], None], start: int = 0,
                 end: int | None = None, pacer: Pacer | None = None) -> None:
        self.sock, self.fd, self.disk = sock, fd, disk
        #: Chunks must lie within [start, end) in increasing order (end: the part's size).
        self.start = start
        self.end = os.fstat(fd).st_size if end is None else end
        self.use_splice = use_splice
        self.on_chunk = on_chunk
        self.pacer = pacer
        self.received = 0
        self._aborted = threading.Event()
        self._buf = bytearray(wire.MAX_CHUNK)

    def abort(self) -> None:
        """Unblocks run() from another thread; it then raises DataChannelError."""
        self._aborted.set()
        if self.pacer is not None:
            self.pacer.wake()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def run(self) -> int:
        """Until END; returns the data bytes received. Raises ChecksumMismatch (the bad
        chunk is not counted), SourceChanged, DataChannelError, StorageFull."""
        pipe = os.pipe() if self.use_splice else None
        if pipe is not None:
            try:
                fcntl.fcntl(pipe[1], F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                pass  # the default 64 KiB pipe works, only slower
        try:
            while True:
                head = wire.recv_exact(self.sock, wire.FRAME.size, "a frame")
                kind, offset, length, dig = wire.FRAME.unpack(head)
                if self._aborted.is_set():
                    raise wire.DataChannelError("copy cancelled")
                if kind == wire.Kind.END:
                    if length != self.received:
                        raise wire.DataChannelError(
                            f"source says it sent {length} bytes, {self.received} arrived")
                    return self.received
                if kind == wire.Kind.ERROR:
                    text = wire.recv_exact(self.sock, min(length, wire.MAX_ERROR_TEXT),
                                           "an error message")
                    wire.raise_error(offset, text.decode(errors="replace"))
                if kind != wire.Kind.DATA or not 0 < length <= wire.MAX_CHUNK:
                    raise wire.DataChannelError(f"bad frame from the source (kind {kind}, "
                                                f"length {length})")
                if offset < self.start or offset + length > self.end:
                    raise wire.DataChannelError(
                        f"the source sent {offset}+{length}, outside {self.start}..{self.end} "
                        "or out of order")
                self.start = offset + length
                if pipe is not None:
                    self._splice(pipe, offset, length)
                    got = self._digest_file(offset, length)
                else:
                    got = self._recv_write(offset, length)
                if got != dig:
                    raise ChecksumMismatch(
                        f"disk {self.disk}: chunk at {offset}+{length} failed its checksum "
                        f"({wire.CHECKSUM})", metadata={"offset": str(offset)})
                start_writeback(self.fd, offset, length)
                self.received += length
                self.on_chunk(offset, length)
                if self.pacer is not None:
                    self.pacer.take(length, self._aborted)
        finally:
            if pipe is not None:
                os.close(pipe[0])
                os.close(pipe[1])

    def _splice(self, pipe: tuple[int, int], offset: int, length: int) -> None:
        r, w = pipe
        sfd = self.sock.fileno()
        pos, left = offset, length
        while left:
            try:
                k = os.splice(sfd, w, min(left, PIPE_SIZE), flags=os.SPLICE_F_MOVE)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    raise wire.DataChannelError("no data from the source for too long") from exc
                raise wire.DataChannelError(f"data channel failed: {exc}") from exc
            if k == 0:
                raise wire.DataChannelError("the source closed the data channel mid-chunk")
            done = 0
            while done < k:
                try:
                    done += os.splice(r, self.fd, k - done, offset_dst=pos + done,
                                      flags=os.SPLICE_F_MOVE)
                except OSError as exc:
                    raise _write_error(exc, f"disk {self.disk}") from exc
            pos += k
            left -= k

    def _digest_file(self, offset: int, length: int) -> bytes:
        base = offset - offset % mmap.ALLOCATIONGRANULARITY
        # MAP_POPULATE: one call maps the chunk's pages instead of a fault per page.
        with mmap.mmap(self.fd, offset - base + length, offset=base, prot=mmap.PROT_READ,
                       flags=mmap.MAP_SHARED | _POPULATE) as m, memoryview(m) as view, \
                view[offset - base:] as piece:
            return wire.digest(piece)

    def _recv_write(self, offset: int, length: int) -> bytes:
        view = memoryview(self._buf)[:length]
        wire.recv_into_exact(self.sock, view, "the rest of a chunk")
        dig = wire.digest(view)
        done = 0
        while done < length:
            try:
                done += os.pwrite(self.fd, view[done:], offset + done)
            except OSError as exc:
                raise _write_error(exc, f"disk {self.disk}") from exc
        return dig
