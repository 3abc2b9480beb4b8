"""Source side of a cold copy: one-time tickets and the data channel listener.

`ExportDisk` (gRPC) describes a stopped guest's disk file and offers a ticket;
the target presents it on the data channel within TICKET_TTL and receives
the file's allocated ranges from its resume offset, each chunk with its
xxh3-128. Sending runs in plain threads (the work is pread, hash and send,
all of which release the GIL); the event loop is never blocked by it.

Test hooks: a file `<state-dir>/faults/corrupt-read-once` makes the next data
chunk go out with one flipped byte (after hashing), then disappears;
`corrupt-read-always` corrupts every data chunk while it exists.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from . import wire
from .bandwidth import Pacer
from .filemap import FileMap, chunks, unchanged

log = logging.getLogger(__name__)

TICKET_TTL = 60.0
#: A target that neither reads nor sends for this long is dropped.
IO_TIMEOUT = 30.0
#: A connection must complete its TLS handshake and send its request within this.
REQUEST_TIMEOUT = 10.0
MAX_SENDERS = 16


@dataclass(frozen=True)
class Export:
    guest_id: str
    disk_id: str
    map: FileMap
    expires: float


class Exports:
    """Tickets handed out by ExportDisk; each one is good for one connection."""

    def __init__(self) -> None:
        self._items: dict[bytes, Export] = {}
        self._lock = threading.Lock()

    def offer(self, guest_id: str, disk_id: str, fmap: FileMap) -> bytes:
        ticket = secrets.token_bytes(wire.TICKET_BYTES)
        now = time.monotonic()
        with self._lock:
            for t in [t for t, e in self._items.items() if e.expires < now]:
                del self._items[t]
            self._items[ticket] = Export(guest_id, disk_id, fmap, now + TICKET_TTL)
        return ticket

    def claim(self, ticket: bytes) -> Export | None:
        with self._lock:
            export = self._items.pop(ticket, None)
        if export is None or export.expires < time.monotonic():
            return None
        return export


class DataServer:
    """Listens on the agent's data port; one thread per connection."""

    def __init__(self, host: str, port: int, exports: Exports, state_dir: Path,
                 tls: ssl.SSLContext | None = None) -> None:
        self.host, self.requested_port = host, port
        self.exports = exports
        self.tls = tls
        self.faults = Path(state_dir) / "faults"
        self.port = 0
        self._listener: socket.socket | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()

    def start(self) -> int:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        ls = socket.socket(family, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((self.host, self.requested_port))
        ls.listen(64)
        self._listener = ls
        self.port = ls.getsockname()[1]
        threading.Thread(target=self._accept_loop, name="data-accept", daemon=True).start()
        return self.port

    async def stop(self) -> None:
        """Closes the listener and every open connection (their senders then end)."""
        self._stopped.set()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopped.is_set():
            try:
                conn, peer = self._listener.accept()
            except OSError:
                if self._stopped.is_set():
                    return
                time.sleep(0.05)
                continue
            with self._lock:
                busy = len(self._conns) >= MAX_SENDERS
                if not busy:
                    self._conns.add(conn)
            if busy:
                threading.Thread(target=self._refuse, args=(conn,), daemon=True).start()
                continue
            threading.Thread(target=self._serve, args=(conn, peer), name="data-send",
                             daemon=True).start()

    def _open(self, conn: socket.socket) -> socket.socket:
        """TLS handshake (when configured) and a short deadline for the request: an idle
        connection must not hold a sender slot for long."""
        conn.settimeout(REQUEST_TIMEOUT)
        wire.tune(conn, IO_TIMEOUT)
        return self.tls.wrap_socket(conn, server_side=True) if self.tls is not None else conn

    def _track(self, old: socket.socket, new: socket.socket) -> None:
        # wrap_socket detaches the accepted socket: stop() must shut the TLS one down.
        with self._lock:
            if old in self._conns:
                self._conns.discard(old)
                self._conns.add(new)

    def _refuse(self, conn: socket.socket) -> None:
        sock = conn
        try:
            sock = self._open(conn)
            wire.recv_exact(sock, wire.REQUEST.size, "a request")  # read it: no reset on close
            sock.sendall(wire.error_frame(wire.ErrorCode.BUSY, "too many copies from this host"))
        except (OSError, ssl.SSLError, wire.DataChannelError):
            pass
        finally:
            sock.close()

    def _serve(self, conn: socket.socket, peer) -> None:
        sock: socket.socket = conn
        try:
            sock = self._open(conn)
            self._track(conn, sock)
            try:
                req = wire.Request.decode(wire.recv_exact(sock, wire.REQUEST.size, "a request"))
            except ValueError as exc:
                sock.sendall(wire.error_frame(wire.ErrorCode.BAD_REQUEST, str(exc)))
                return
            sock.settimeout(IO_TIMEOUT)
            export = self.exports.claim(req.ticket)
            if export is None:
                sock.sendall(wire.error_frame(wire.ErrorCode.BAD_TICKET,
                                              "unknown, used or expired ticket"))
                return
            self._send(sock, export, req)
        except (OSError, ssl.SSLError, wire.DataChannelError) as exc:
            log.warning("data channel to %s ended: %s", peer, exc)
        finally:
            with self._lock:
                self._conns.discard(conn)
                self._conns.discard(sock)
            sock.close()

    def _send(self, sock: socket.socket, export: Export, req: wire.Request) -> None:
        fmap = export.map
        once = self.faults / "corrupt-read-once"
        always = self.faults / "corrupt-read-always"
        pacer = Pacer(req.bandwidth)
        buf = bytearray(req.chunk_size)
        view = memoryview(buf)
        sent = 0
        started = time.monotonic()
        try:
            fd = os.open(fmap.path, os.O_RDONLY)
        except OSError as exc:
            sock.sendall(wire.error_frame(wire.ErrorCode.READ_FAILED, str(exc)))
            return
        fobj = os.fdopen(fd, "rb", closefd=False)
        try:
            for off, n in chunks(fmap.ranges, req.chunk_size, req.offset):
                pacer.take(n)
                piece = view[:n]
                try:
                    got = os.preadv(fd, [piece], off)
                except OSError as exc:
                    sock.sendall(wire.error_frame(wire.ErrorCode.READ_FAILED,
                                                  f"{fmap.path} at {off}: {exc}"))
                    return
                if got != n:
                    # Shorter than the map said: the file shrank under us.
                    sock.sendall(wire.error_frame(wire.ErrorCode.SOURCE_CHANGED,
                                                  f"{fmap.path} is shorter than when described"))
                    return
                dig = wire.digest(piece)
                sock.sendall(wire.frame(wire.Kind.DATA, off, n, dig))
                if once.exists() or always.exists():
                    once.unlink(missing_ok=True)
                    log.warning("fault injection: corrupting the chunk at %d of disk %s", off,
                                export.disk_id)
                    buf[0] ^= 0xFF
                    sock.sendall(piece)
                # The bytes go out from the page cache (sendfile: no copy through Python);
                # had they changed since they were hashed, the target's check fails.
                elif sock.sendfile(fobj, off, n) != n:
                    log.warning("disk %s shrank while it was sent", export.disk_id)
                    return  # the target sees the channel close mid-chunk
                sent += n
        finally:
            fobj.close()
            os.close(fd)
        if not unchanged(fmap):
            sock.sendall(wire.error_frame(wire.ErrorCode.SOURCE_CHANGED,
                                          f"{fmap.path} changed while it was sent"))
            return
        sock.sendall(wire.frame(wire.Kind.END, 0, sent))
        took = time.monotonic() - started
        log.info("sent disk %s of guest %s from offset %d: %d bytes in %.2fs", export.disk_id,
                 export.guest_id, req.offset, sent, took)
