"""The cold copy's data channel: a plain TCP (or TLS) stream between two agents.

gRPC carries the control (ExportDisk hands out a one-time ticket); the disk's
bytes go over this channel because a Python gRPC stream tops out far below
what a disk and the kernel's socket path can do. The target connects to the
source's data address and sends one request; the source answers with frames:

    request  := MAGIC(8) ticket(32) offset(u64) chunk_size(u32) bandwidth_bytes_per_s(u64)
    frame    := kind(u8) offset(u64) length(u64) digest(16) payload
    DATA     payload = `length` bytes of the file at `offset`, digest = xxh3-128 of them
    END      payload = none, length = data bytes sent on this connection
    ERROR    payload = `length` bytes of UTF-8 message, offset = an ErrorCode

Every integer is big-endian. The channel never decides anything: the target
verifies each digest, and the journal decides what is durable.
"""

from __future__ import annotations

import enum
import errno
import socket
import struct
from dataclasses import dataclass

import xxhash
from ferry_common.errors import FailedPrecondition, Internal, Unavailable

from ..errors import HostError

MAGIC = b"FERRYDC1"
CHECKSUM = "xxh3-128"
TICKET_BYTES = 32
REQUEST = struct.Struct(">8s32sQIQ")
FRAME = struct.Struct(">BQQ16s")
MAX_CHUNK = 8 * 1024 * 1024
MIN_CHUNK = 64 * 1024
MAX_ERROR_TEXT = 4096

digest = xxhash.xxh3_128_digest


class Kind(enum.IntEnum):
    DATA = 1
    END = 2
    ERROR = 3


class ErrorCode(enum.IntEnum):
    BAD_REQUEST = 1
    BAD_TICKET = 2
    SOURCE_CHANGED = 3
    READ_FAILED = 4
    BUSY = 5


class DataChannelError(Unavailable, HostError):
    """The data channel broke: the source went away, stalled, or answered nonsense."""

    reason = "DATA_CHANNEL_FAILED"


class SourceBusy(DataChannelError):
    """The source serves its maximum of copies; asking again later works."""

    reason = "SOURCE_BUSY"


class TicketRefused(FailedPrecondition, HostError):
    reason = "TICKET_REFUSED"


class SourceReadFailed(Internal, HostError):
    reason = "SOURCE_READ_FAILED"


class SourceChanged(Exception):
    """The source file changed while or since it was described: the copy starts over."""


@dataclass(frozen=True)
class Request:
    ticket: bytes
    offset: int
    chunk_size: int
    bandwidth: int  # bytes/s, 0 = unlimited

    def encode(self) -> bytes:
        return REQUEST.pack(MAGIC, self.ticket, self.offset, self.chunk_size, self.bandwidth)

    @classmethod
    def decode(cls, raw: bytes) -> Request:
        magic, ticket, offset, chunk, bw = REQUEST.unpack(raw)
        if magic != MAGIC:
            raise ValueError("not a Ferry data channel request")
        if not MIN_CHUNK <= chunk <= MAX_CHUNK:
            raise ValueError(f"chunk size must be between {MIN_CHUNK} and {MAX_CHUNK}")
        return cls(ticket, offset, chunk, bw)


def frame(kind: Kind, offset: int = 0, length: int = 0, dig: bytes = bytes(16)) -> bytes:
    return FRAME.pack(kind, offset, length, dig)


def error_frame(code: ErrorCode, message: str) -> bytes:
    text = message.encode()[:MAX_ERROR_TEXT]
    return frame(Kind.ERROR, code, len(text)) + text


def raise_error(code: int, message: str) -> None:
    """Turns an ERROR frame into the target's exception."""
    if code == ErrorCode.SOURCE_CHANGED:
        raise SourceChanged(message)
    if code == ErrorCode.BAD_TICKET:
        raise TicketRefused(f"source refused the data channel ticket: {message}",
                            state="BAD_TICKET")
    if code == ErrorCode.READ_FAILED:
        raise SourceReadFailed(f"source could not read the disk: {message}")
    if code == ErrorCode.BUSY:
        raise SourceBusy(f"source is busy: {message}")
    raise DataChannelError(f"source data channel: {message}")


def set_blocking_timeouts(sock: socket.socket, seconds: float) -> None:
    """Kernel-side timeouts for a socket kept in blocking mode (splice needs one):
    a read or write that makes no progress for `seconds` fails with EAGAIN, and
    unacknowledged data fails the connection (a peer that vanished)."""
    tv = struct.pack("ll", int(seconds), int((seconds % 1) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
    tune(sock, seconds)


def tune(sock: socket.socket, seconds: float) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(seconds * 1000))


def recv_exact(sock: socket.socket, n: int, what: str) -> bytes:
    """Exactly n bytes, or DataChannelError (EOF, reset or timeout)."""
    buf = bytearray(n)
    recv_into_exact(sock, memoryview(buf), what)
    return bytes(buf)


def recv_into_exact(sock: socket.socket, view: memoryview, what: str) -> None:
    """Fills `view`, or DataChannelError (EOF, reset or timeout)."""
    n = len(view)
    got = 0
    while got < n:
        try:
            k = sock.recv_into(view[got:], n - got)
        except (TimeoutError, BlockingIOError) as exc:
            raise DataChannelError(f"no data from the source for too long (waiting for {what})"
                                   ) from exc
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise DataChannelError(f"no data from the source for too long (waiting for "
                                       f"{what})") from exc
            raise DataChannelError(f"data channel failed while waiting for {what}: {exc}") from exc
        if k == 0:
            raise DataChannelError(f"the source closed the data channel (waiting for {what})")
        got += k
