"""The cold copy's data channel, end to end on real sockets and real files.

A `DataServer` on 127.0.0.1 serves tickets from `Exports`; the test plays the
target the way `puller.DiskPull` does: connect, send one `wire.Request`, run a
`Receiver` into a part file pre-sized with ftruncate. Fake sources (a bare
listening socket the test controls) cover stalls and cancellation.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from ferry_common.tls import TlsConfig
from ferry_host.migration import exporter, wire
from ferry_host.migration.exporter import DataServer, Exports
from ferry_host.migration.filemap import FileMap, allocated_ranges, map_file
from ferry_host.migration.receiver import ChecksumMismatch, Receiver
from fixtures.pki import make_ca, make_leaf

pytestmark = pytest.mark.timeout(30)

KiB = 1024
MiB = 1024 * KiB
CHUNK = 1 * MiB
HOST = "127.0.0.1"

#: (offset, length) of the data written into the sparse source, block aligned and apart,
#: so SEEK_DATA/SEEK_HOLE must report exactly these ranges. The 2.5 MiB one spans chunks.
SPARSE_SIZE = 48 * MiB
SPARSE_PIECES = [(0, 64 * KiB), (1 * MiB, 300 * KiB), (8 * MiB, 2 * MiB + 512 * KiB),
                 (SPARSE_SIZE - 8 * KiB, 8 * KiB)]
SPARSE_DATA = sum(n for _, n in SPARSE_PIECES)


# --------------------------------------------------------------------------- helpers


def make_sparse(path: Path, size: int = SPARSE_SIZE, pieces=SPARSE_PIECES, seed: int = 1) -> Path:
    rng = random.Random(seed)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.truncate(fd, size)
        for off, n in pieces:
            assert os.pwrite(fd, rng.randbytes(n), off) == n
    finally:
        os.close(fd)
    return path


def open_part(path: Path, size: int) -> int:
    """Like puller.DiskPull._open_part: a sparse file of the source's size."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.ftruncate(fd, size)
    return fd


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def plain_connect(port: int, timeout: float = 5.0) -> socket.socket:
    """As puller._connect does without TLS: blocking, kernel-side timeouts."""
    sock = socket.create_connection((HOST, port), timeout=5)
    sock.settimeout(None)
    wire.set_blocking_timeouts(sock, timeout)
    return sock


def tls_connect(port: int, tls: TlsConfig) -> ssl.SSLSocket:
    """As puller._connect does with TLS (the handshake happens here)."""
    sock = socket.create_connection((HOST, port), timeout=5)
    sock.settimeout(5)
    wire.tune(sock, 5)
    try:
        return tls.client_ssl_context().wrap_socket(sock, server_hostname=HOST)
    except BaseException:
        sock.close()
        raise


class Chunks:
    """on_chunk recorder."""

    def __init__(self, hook: Callable[[int, int], None] | None = None) -> None:
        self.calls: list[tuple[int, int]] = []
        self.first = threading.Event()
        self.hook = hook

    def __call__(self, offset: int, length: int) -> None:
        self.calls.append((offset, length))
        self.first.set()
        if self.hook is not None:
            self.hook(offset, length)

    def merged(self) -> list[tuple[int, int]]:
        out: list[list[int]] = []
        for off, n in self.calls:
            if out and out[-1][0] + out[-1][1] == off:
                out[-1][1] += n
            else:
                out.append([off, n])
        return [(a, b) for a, b in out]


def receive(sock: socket.socket, fd: int, request: wire.Request, *, use_splice: bool = True,
            on_chunk: Chunks | None = None) -> tuple[int, Chunks]:
    """The target's side of one copy, as puller.DiskPull._receive."""
    rec = on_chunk or Chunks()
    try:
        sock.sendall(request.encode())
        got = Receiver(sock, fd, "disk-1", use_splice=use_splice, on_chunk=rec).run()
    finally:
        sock.close()
    return got, rec


class Background:
    """Receiver.run() in a thread; join() tells whether it ended."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.result: int | None = None
        self.error: BaseException | None = None
        self.ended_at: float | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.result = self.receiver.run()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc
        finally:
            self.ended_at = time.monotonic()

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self) -> None:
        """Cleanup after a failed assertion: never leave a receiver running."""
        self.receiver.abort()
        self._thread.join(5)


class FakeSource:
    """A listening socket the test controls: it accepts and sends what it is told."""

    def __init__(self) -> None:
        self.listener = socket.create_server((HOST, 0))
        self.listener.settimeout(5)
        self.port = self.listener.getsockname()[1]
        self.conns: list[socket.socket] = []

    def accept(self) -> socket.socket:
        conn, _ = self.listener.accept()
        self.conns.append(conn)
        return conn

    def close(self) -> None:
        for c in self.conns:
            c.close()
        self.listener.close()


def read_frame(sock: socket.socket) -> tuple[int, int, int, bytes]:
    kind, offset, length, _ = wire.FRAME.unpack(wire.recv_exact(sock, wire.FRAME.size, "frame"))
    payload = wire.recv_exact(sock, length, "payload") if kind == wire.Kind.ERROR else b""
    return kind, offset, length, payload


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    d = tmp_path / "state"
    d.mkdir()
    return d


@pytest.fixture
def serve(state_dir: Path):
    """Starts DataServers on 127.0.0.1 (ephemeral port); every one is stopped afterwards."""
    started: list[DataServer] = []

    def start(exports: Exports, tls: ssl.SSLContext | None = None) -> DataServer:
        server = DataServer(HOST, 0, exports, state_dir, tls=tls)
        port = server.start()
        assert port == server.port and port > 0
        started.append(server)
        return server

    yield start
    for server in started:
        asyncio.run(server.stop())


@pytest.fixture
def fake_source():
    src = FakeSource()
    yield src
    src.close()


@pytest.fixture
def sparse(tmp_path: Path) -> tuple[Path, FileMap]:
    path = make_sparse(tmp_path / "source.img")
    fmap = map_file(path)
    # The map is the file's real layout, not an approximation.
    assert fmap.file_size == SPARSE_SIZE
    assert list(fmap.ranges) == SPARSE_PIECES
    assert fmap.data_bytes == SPARSE_DATA
    return path, fmap


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is not installed")
    d = tmp_path_factory.mktemp("pki")
    make_ca(d, "ca")
    make_ca(d, "rogue-ca")
    # Host agents use one certificate both ways (data server and data client).
    both = "serverAuth,clientAuth"
    make_leaf(d, "ca", "source-host", both)
    make_leaf(d, "ca", "target-host", both)
    make_leaf(d, "rogue-ca", "intruder", both)
    return d


def tls_config(pki: Path, name: str, ca: str = "ca") -> TlsConfig:
    return TlsConfig(ca_file=pki / f"{ca}.pem", cert_file=pki / f"{name}.pem",
                     key_file=pki / f"{name}.key")


# --------------------------------------------------------------------------- 1. plain copy


def assert_same_sparse_copy(src: Path, dst: Path, fmap: FileMap) -> None:
    assert dst.read_bytes() == src.read_bytes()
    # Holes stay holes: the copy allocates what the source holds, not its size.
    dst_fd = os.open(dst, os.O_RDONLY)
    try:
        assert allocated_ranges(dst_fd, fmap.file_size) == list(fmap.ranges)
    finally:
        os.close(dst_fd)
    assert fmap.data_bytes <= allocated(dst) <= fmap.data_bytes + 256 * KiB


def assert_chunks_cover(rec: Chunks, ranges, chunk_size: int) -> None:
    offsets = [off for off, _ in rec.calls]
    assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets), rec.calls
    assert all(0 < n <= chunk_size for _, n in rec.calls), rec.calls
    assert rec.merged() == list(ranges)


@pytest.mark.parametrize("use_splice", [True, False], ids=["splice", "recv-pwrite"])
def test_plain_copy_of_a_sparse_file(tmp_path, serve, sparse, use_splice):
    src, fmap = sparse
    exports = Exports()
    server = serve(exports)
    ticket = exports.offer("guest-1", "disk-1", fmap)
    dst = tmp_path / "copy.part"
    fd = open_part(dst, fmap.file_size)
    try:
        got, rec = receive(plain_connect(server.port), fd,
                           wire.Request(ticket, 0, CHUNK, 0), use_splice=use_splice)
    finally:
        os.close(fd)
    assert got == fmap.data_bytes == SPARSE_DATA
    assert_chunks_cover(rec, SPARSE_PIECES, CHUNK)
    assert len(rec.calls) == 6  # the 2.5 MiB range goes as 1 + 1 + 0.5 MiB
    assert os.stat(dst).st_size == SPARSE_SIZE
    assert_same_sparse_copy(src, dst, fmap)


def test_plain_copy_of_a_qcow2_image(tmp_path, serve):
    if shutil.which("qemu-img") is None or shutil.which("qemu-io") is None:
        pytest.skip("qemu-img/qemu-io are not installed")
    src = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(src), "256M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 8M", str(src)], check=True,
                   capture_output=True)
    fmap = map_file(src)
    assert 8 * MiB < fmap.data_bytes < 10 * MiB  # header, tables and 8 MiB of clusters
    exports = Exports()
    server = serve(exports)
    ticket = exports.offer("guest-1", "disk-1", fmap)
    dst = tmp_path / "copy.qcow2"
    fd = open_part(dst, fmap.file_size)
    try:
        got, rec = receive(plain_connect(server.port), fd, wire.Request(ticket, 0, 4 * MiB, 0))
    finally:
        os.close(fd)
    assert got == fmap.data_bytes
    assert_chunks_cover(rec, fmap.ranges, 4 * MiB)
    assert dst.read_bytes() == src.read_bytes()
    subprocess.run(["qemu-img", "check", "-q", "-f", "qcow2", str(dst)], check=True)
    subprocess.run(["qemu-img", "compare", "-q", "-f", "qcow2", "-F", "qcow2", str(src),
                    str(dst)], check=True)
    read = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "read -P 0x5a 0 8M", str(dst)],
                          capture_output=True, text=True, check=True)
    assert "Pattern verification failed" not in read.stdout + read.stderr


def test_a_file_of_holes_only_sends_nothing(tmp_path, serve):
    src = make_sparse(tmp_path / "empty.img", size=16 * MiB, pieces=[])
    fmap = map_file(src)
    assert fmap.ranges == () and fmap.data_bytes == 0
    exports = Exports()
    server = serve(exports)
    ticket = exports.offer("guest-1", "disk-1", fmap)
    fd = open_part(tmp_path / "copy.part", fmap.file_size)
    try:
        got, rec = receive(plain_connect(server.port), fd, wire.Request(ticket, 0, CHUNK, 0))
    finally:
        os.close(fd)
    assert got == 0 and rec.calls == []
    assert allocated(tmp_path / "copy.part") == 0


# --------------------------------------------------------------------------- 2. TLS


def test_tls_copy_with_mutual_certificates(tmp_path, serve, sparse, pki):
    src, fmap = sparse
    exports = Exports()
    server = serve(exports, tls=tls_config(pki, "source-host").server_ssl_context())
    ticket = exports.offer("guest-1", "disk-1", fmap)
    dst = tmp_path / "copy.part"
    fd = open_part(dst, fmap.file_size)
    try:
        sock = tls_connect(server.port, tls_config(pki, "target-host"))
        assert isinstance(sock, ssl.SSLSocket) and sock.version() is not None
        got, rec = receive(sock, fd, wire.Request(ticket, 0, CHUNK, 0), use_splice=False)
    finally:
        os.close(fd)
    assert got == fmap.data_bytes
    assert_chunks_cover(rec, SPARSE_PIECES, CHUNK)
    assert_same_sparse_copy(src, dst, fmap)


@pytest.mark.parametrize("client", ["foreign-ca", "no-certificate"])
def test_tls_refuses_a_client_the_ca_did_not_sign(tmp_path, serve, sparse, pki, client):
    src, fmap = sparse
    exports = Exports()
    server = serve(exports, tls=tls_config(pki, "source-host").server_ssl_context())
    ticket = exports.offer("guest-1", "disk-1", fmap)
    if client == "foreign-ca":  # trusts the right CA, but presents a rogue certificate
        tls = TlsConfig(ca_file=pki / "ca.pem", cert_file=pki / "intruder.pem",
                        key_file=pki / "intruder.key")
    else:
        tls = TlsConfig(ca_file=pki / "ca.pem")
    dst = tmp_path / "copy.part"
    fd = open_part(dst, fmap.file_size)
    rec = Chunks()
    try:
        # TLS 1.3: the client may finish its handshake before the server rejects its
        # certificate; then the first read fails instead.
        with pytest.raises((OSError, wire.DataChannelError)):
            receive(tls_connect(server.port, tls), fd, wire.Request(ticket, 0, CHUNK, 0),
                    use_splice=False, on_chunk=rec)
        assert rec.calls == []
        assert allocated(dst) == 0
        # The refused client never got to present (and burn) the ticket.
        got, rec = receive(tls_connect(server.port, tls_config(pki, "target-host")), fd,
                           wire.Request(ticket, 0, CHUNK, 0), use_splice=False)
        assert got == fmap.data_bytes
    finally:
        os.close(fd)
    assert dst.read_bytes() == src.read_bytes()


# --------------------------------------------------------------------------- 3. resume


@pytest.mark.parametrize("offset", [8 * MiB + 1536 * KiB, 3 * MiB],
                         ids=["inside-a-range", "inside-a-hole"])
def test_resume_sends_only_what_is_at_or_after_the_offset(tmp_path, serve, sparse, offset):
    src, fmap = sparse
    exports = Exports()
    server = serve(exports)
    ticket = exports.offer("guest-1", "disk-1", fmap)
    dst = tmp_path / "copy.part"
    fd = open_part(dst, fmap.file_size)
    try:
        got, rec = receive(plain_connect(server.port), fd, wire.Request(ticket, offset, CHUNK, 0))
    finally:
        os.close(fd)
    expected = [(max(a, offset), a + n - max(a, offset)) for a, n in SPARSE_PIECES
                if a + n > offset]
    assert got == fmap.bytes_from(offset) == sum(n for _, n in expected)
    assert 0 < got < fmap.data_bytes
    assert rec.calls[0][0] == max(offset, expected[0][0])
    assert all(off >= offset for off, _ in rec.calls)
    assert_chunks_cover(rec, expected, CHUNK)
    copy, orig = dst.read_bytes(), src.read_bytes()
    assert copy[offset:] == orig[offset:]
    assert copy[:offset] == bytes(offset)  # nothing before the resume point was sent


# --------------------------------------------------------------------------- 4. tickets


def test_unknown_ticket_is_refused(tmp_path, serve, sparse):
    _, fmap = sparse
    exports = Exports()
    server = serve(exports)
    exports.offer("guest-1", "disk-1", fmap)
    fd = open_part(tmp_path / "copy.part", fmap.file_size)
    try:
        with pytest.raises(wire.TicketRefused, match="unknown, used or expired"):
            receive(plain_connect(server.port), fd,
                    wire.Request(os.urandom(wire.TICKET_BYTES), 0, CHUNK, 0))
    finally:
        os.close(fd)
    assert allocated(tmp_path / "copy.part") == 0


def test_a_ticket_works_once(tmp_path, serve, sparse):
    _, fmap = sparse
    exports = Exports()
    server = serve(exports)
    ticket = exports.offer("guest-1", "disk-1", fmap)
    fd = open_part(tmp_path / "copy.part", fmap.file_size)
    try:
        got, _ = receive(plain_connect(server.port), fd, wire.Request(ticket, 0, CHUNK, 0))
        assert got == fmap.data_bytes
        with pytest.raises(wire.TicketRefused) as info:
            receive(plain_connect(server.port), fd, wire.Request(ticket, 0, CHUNK, 0))
        assert info.value.reason == "TICKET_REFUSED"
    finally:
        os.close(fd)


def test_an_expired_ticket_is_refused(tmp_path, serve, sparse, monkeypatch):
    _, fmap = sparse
    exports = Exports()
    server = serve(exports)
    monkeypatch.setattr(exporter, "TICKET_TTL", -1.0)
    expired = exports.offer("guest-1", "disk-1", fmap)
    monkeypatch.setattr(exporter, "TICKET_TTL", 60.0)
    fresh = exports.offer("guest-1", "disk-1", fmap)  # also sweeps the expired one
    fd = open_part(tmp_path / "copy.part", fmap.file_size)
    try:
        with pytest.raises(wire.TicketRefused):
            receive(plain_connect(server.port), fd, wire.Request(expired, 0, CHUNK, 0))
        assert allocated(tmp_path / "copy.part") == 0
        got, _ = receive(plain_connect(server.port), fd, wire.Request(fresh, 0, CHUNK, 0))
        assert got == fmap.data_bytes
    finally:
        os.close(fd)


def test_a_ticket_expiring_while_unclaimed_is_refused(tmp_path, serve, sparse, monkeypatch):
    """Expiry is checked at claim time too (no sweep in between)."""
    _, fmap = sparse
    exports = Exports()
    server = serve(exports)
    ticket = exports.offer("guest-1", "disk-1", fmap)
    later = time.monotonic() + exporter.TICKET_TTL + 1
    monkeypatch.setattr(exporter.time, "monotonic", lambda: later)
    fd = open_part(tmp_path / "copy.part", fmap.file_size)
    try:
        with pytest.raises(wire.TicketRefused):
            receive(plain_connect(server.port), fd, wire.Request(ticket, 0, CHUNK, 0))
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- 5. faults


def test_corrupt_read_once_fails_one_copy_then_the_next_one_succeeds(tmp_path, serve, sparse,
                                                                      state_dir):
    src, fmap = sparse
    faults = state_dir / "faults"
    faults.mkdir()
    once = faults / "corrupt-read-once"
    once.touch()
    exports = Exports()
    server = serve(exports)
    dst = tmp_path / "copy.part"
    fd = open_part(dst, fmap.file_size)
    rec = Chunks()
    try:
        with pytest.raises(ChecksumMismatch) as info:
            receive(plain_connect(server.port), fd,
                    wire.Request(exports.offer("g", "disk-1", fmap), 0, CHUNK, 0), on_chunk=rec)
        first = SPARSE_PIECES[0][0]
        assert f"chunk at {first}+{SPARSE_PIECES[0][1]}" in info.value.message
        assert info.value.metadata == {"offset": str(first)}
        assert rec.calls == []  # the bad chunk is not reported as verified
        assert not once.exists()

        got, rec = receive(plain_connect(server.port), fd,
                           wire.Request(exports.offer("g", "disk-1", fmap), 0, CHUNK, 0))
        assert got == fmap.data_bytes
    finally:
        os.close(fd)
    assert dst.read_bytes() == src.read_bytes()


def test_corrupt_read_always_fails_every_copy(tmp_path, serve, sparse, state_dir):
    _, fmap = sparse
    (state_dir / "faults").mkdir()
    (state_dir / "faults" / "corrupt-read-always").touch()
    exports = Exports()
    server = serve(exports)
    fd = open_part(tmp_path / "copy.part", fmap.file_size)
    try:
        # Resume in the third range: the first chunk there is the one named.
        for offset, expect in [(0, 0), (8 * MiB + 4 * KiB, 8 * MiB + 4 * KiB)]:
            with pytest.raises(ChecksumMismatch) as info:
                receive(plain_connect(server.port), fd,
                        wire.Request(exports.offer("g", "disk-1", fmap), offset, CHUNK, 0))
            assert info.value.metadata["offset"] == str(expect)
    finally:
        os.close(fd)
    assert (state_dir / "faults" / "corrupt-read-always").exists()


# --------------------------------------------------------------------------- 6. source changed


@pytest.mark.parametrize("change", ["append", "shrink", "rewrite-in-place"])
def test_a_source_changed_after_it_was_described(tmp_path, serve, sparse, change):
    src, fmap = sparse
    exports = Exports()
    server = serve(exports)
    ticket = exports.offer("guest-1", "disk-1", fmap)
    time.sleep(0.02)  # past any coarse timestamp granularity of the filesystem
    wfd = os.open(src, os.O_RDWR)
    try:
        if change == "append":
            os.pwrite(wfd, b"\x01" * 4096, SPARSE_SIZE)
        elif change == "shrink":
            os.ftruncate(wfd, 8 * MiB + 512 * KiB)  # in the middle of the third range
        else:  # same size, same ranges, other bytes
            os.pwrite(wfd, b"\x02" * 4096, 1 * MiB)
    finally:
        os.close(wfd)
    fd = open_part(tmp_path / "copy.part", fmap.file_size)
    try:
        with pytest.raises(wire.SourceChanged, match="shorter|changed"):
            receive(plain_connect(server.port), fd, wire.Request(ticket, 0, CHUNK, 0))
    finally:
        os.close(fd)


def test_a_source_changed_while_it_was_sent(tmp_path, serve, sparse):
    src, fmap = sparse
    exports = Exports()
    server = serve(exports)
    ticket = exports.offer("guest-1", "disk-1", fmap)

    def scribble(offset: int, length: int) -> None:  # after the first verified chunk
        if offset == 0:
            time.sleep(0.02)
            wfd = os.open(src, os.O_RDWR)
            os.pwrite(wfd, b"\x03" * 4096, 8 * MiB)
            os.close(wfd)

    fd = open_part(tmp_path / "copy.part", fmap.file_size)
    try:
        with pytest.raises(wire.SourceChanged, match="changed while it was sent"):
            # 64 KiB chunks at 4 MiB/s: the change lands while the copy is under way.
            receive(plain_connect(server.port), fd,
                    wire.Request(ticket, 0, wire.MIN_CHUNK, 4 * MiB),
                    on_chunk=Chunks(scribble))
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- 7. abort


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("stage", ["waiting-for-a-frame", "mid-chunk"])
@pytest.mark.parametrize("use_splice", [True, False], ids=["splice", "recv-pwrite"])
def test_abort_unblocks_a_receiver_waiting_on_a_silent_source(tmp_path, fake_source, stage,
                                                              use_splice):
    fd = open_part(tmp_path / "copy.part", 16 * MiB)
    sock = plain_connect(fake_source.port, timeout=20)
    conn = fake_source.accept()
    if stage == "mid-chunk":
        payload = os.urandom(CHUNK)
        conn.sendall(wire.frame(wire.Kind.DATA, 0, CHUNK, wire.digest(payload)) + payload[:1000])
    before = open_fds()
    rec = Chunks()
    run = Background(Receiver(sock, fd, "disk-1", use_splice=use_splice, on_chunk=rec))
    try:
        assert not run.join(0.3), "run() returned although the source sent nothing"
        asked = time.monotonic()
        run.receiver.abort()
        assert run.join(2), "abort() did not unblock run()"
        assert isinstance(run.error, wire.DataChannelError), run.error
        assert run.ended_at - asked < 1.0
        assert rec.calls == []
        assert open_fds() == before  # its pipe is closed again
    finally:
        run.stop()
        sock.close()
        os.close(fd)


# --------------------------------------------------------------------------- 8. stalls


@pytest.mark.parametrize("stage", ["after-a-data-header", "before-any-frame"])
@pytest.mark.parametrize("use_splice", [True, False], ids=["splice", "recv-pwrite"])
def test_a_stalled_source_is_detected_by_the_kernel_timeout(tmp_path, fake_source, stage,
                                                            use_splice):
    fd = open_part(tmp_path / "copy.part", 16 * MiB)
    sock = plain_connect(fake_source.port, timeout=0.5)
    conn = fake_source.accept()
    if stage == "after-a-data-header":
        conn.sendall(wire.frame(wire.Kind.DATA, 0, CHUNK, wire.digest(bytes(CHUNK))))
    started = time.monotonic()
    try:
        with pytest.raises(wire.DataChannelError) as info:
            Receiver(sock, fd, "disk-1", use_splice=use_splice, on_chunk=Chunks()).run()
        took = time.monotonic() - started
        assert 0.4 < took < 2.0, took
        if use_splice or stage == "before-any-frame":
            assert "for too long" in str(info.value)
    finally:
        sock.close()
        os.close(fd)


# --------------------------------------------------------------------------- fake-source answers


def test_receiver_rejects_an_end_frame_that_does_not_add_up(tmp_path, fake_source):
    fd = open_part(tmp_path / "copy.part", 16 * MiB)
    sock = plain_connect(fake_source.port)
    conn = fake_source.accept()
    payload = os.urandom(wire.MIN_CHUNK)
    conn.sendall(wire.frame(wire.Kind.DATA, 4 * MiB, len(payload), wire.digest(payload)) + payload
                 + wire.frame(wire.Kind.END, 0, 2 * len(payload)))
    rec = Chunks()
    try:
        with pytest.raises(wire.DataChannelError, match="says it sent"):
            Receiver(sock, fd, "disk-1", use_splice=True, on_chunk=rec).run()
    finally:
        sock.close()
        os.close(fd)
    assert rec.calls == [(4 * MiB, wire.MIN_CHUNK)]
    with open(tmp_path / "copy.part", "rb") as f:
        f.seek(4 * MiB)
        assert f.read(len(payload)) == payload


@pytest.mark.parametrize("head", [wire.frame(7, 0, 10), wire.frame(wire.Kind.DATA, 0, 0),
                                  wire.frame(wire.Kind.DATA, 0, wire.MAX_CHUNK + 1)],
                         ids=["unknown-kind", "empty-data", "oversized-data"])
def test_receiver_rejects_a_bad_frame(tmp_path, fake_source, head):
    fd = open_part(tmp_path / "copy.part", 16 * MiB)
    sock = plain_connect(fake_source.port)
    fake_source.accept().sendall(head)
    try:
        with pytest.raises(wire.DataChannelError, match="bad frame"):
            Receiver(sock, fd, "disk-1", use_splice=True, on_chunk=Chunks()).run()
    finally:
        sock.close()
        os.close(fd)


@pytest.mark.parametrize("frames", [
    [(4 * MiB, "a"), (0, "b")],  # goes backwards
    [(16 * MiB - 1024, "a")],  # past the end of the part
], ids=["out-of-order", "past-the-end"])
def test_receiver_refuses_chunks_outside_the_part_or_out_of_order(tmp_path, fake_source, frames):
    fd = open_part(tmp_path / "copy.part", 16 * MiB)
    sock = plain_connect(fake_source.port)
    conn = fake_source.accept()
    payload = os.urandom(wire.MIN_CHUNK)
    for offset, _ in frames:
        conn.sendall(wire.frame(wire.Kind.DATA, offset, len(payload), wire.digest(payload))
                     + payload)
    rec = Chunks()
    try:
        with pytest.raises(wire.DataChannelError, match="outside"):
            Receiver(sock, fd, "disk-1", use_splice=True, on_chunk=rec).run()
    finally:
        sock.close()
        os.close(fd)
    assert os.stat(tmp_path / "copy.part").st_size == 16 * MiB
    assert len(rec.calls) == len(frames) - 1


# --------------------------------------------------------------------------- 9. busy


def test_too_many_senders_are_refused_with_an_error_frame(tmp_path, serve, sparse, monkeypatch):
    _, fmap = sparse
    monkeypatch.setattr(exporter, "MAX_SENDERS", 1)
    exports = Exports()
    server = serve(exports)
    ticket = exports.offer("guest-1", "disk-1", fmap)
    # A slow client holds the only slot: connected, its request never sent.
    holder = socket.create_connection((HOST, server.port), timeout=5)
    fd = open_part(tmp_path / "copy.part", fmap.file_size)
    try:
        with pytest.raises(wire.DataChannelError, match="too many copies"):
            receive(plain_connect(server.port), fd, wire.Request(ticket, 0, CHUNK, 0))
        assert allocated(tmp_path / "copy.part") == 0
        holder.close()
        # The slot frees once the server sees the holder go; the refused ticket is intact.
        deadline = time.monotonic() + 5
        while True:
            try:
                got, _ = receive(plain_connect(server.port), fd, wire.Request(ticket, 0, CHUNK, 0))
                break
            except wire.DataChannelError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert got == fmap.data_bytes
    finally:
        holder.close()
        os.close(fd)


def test_too_many_senders_are_refused_with_an_error_frame_over_tls(tmp_path, serve, sparse, pki,
                                                                   monkeypatch):
    _, fmap = sparse
    monkeypatch.setattr(exporter, "MAX_SENDERS", 1)
    exports = Exports()
    server = serve(exports, tls=tls_config(pki, "source-host").server_ssl_context())
    ticket = exports.offer("guest-1", "disk-1", fmap)
    holder = socket.create_connection((HOST, server.port), timeout=5)
    fd = open_part(tmp_path / "copy.part", fmap.file_size)
    try:
        with pytest.raises(wire.DataChannelError, match="too many copies"):
            receive(tls_connect(server.port, tls_config(pki, "target-host")), fd,
                    wire.Request(ticket, 0, CHUNK, 0), use_splice=False)
    finally:
        holder.close()
        os.close(fd)


# --------------------------------------------------------------------------- 10. bad requests


def test_request_round_trip_and_validation():
    ticket = os.urandom(wire.TICKET_BYTES)
    raw = wire.Request(ticket, 123 * MiB, wire.MIN_CHUNK, 5_000_000).encode()
    assert len(raw) == wire.REQUEST.size == 60 and raw.startswith(wire.MAGIC)
    assert wire.Request.decode(raw) == wire.Request(ticket, 123 * MiB, wire.MIN_CHUNK, 5_000_000)
    assert wire.Request.decode(wire.Request(ticket, 0, wire.MAX_CHUNK, 0).encode()).chunk_size \
        == wire.MAX_CHUNK

    with pytest.raises(ValueError, match="not a Ferry"):
        wire.Request.decode(b"NOTFERRY" + raw[8:])
    for chunk in (0, wire.MIN_CHUNK - 1, wire.MAX_CHUNK + 1, 2**32 - 1):
        with pytest.raises(ValueError, match="chunk size"):
            wire.Request.decode(wire.Request(ticket, 0, chunk, 0).encode())


@pytest.mark.parametrize("bad", ["magic", "small-chunk", "huge-chunk"])
def test_the_server_answers_a_bad_request_with_an_error_frame(tmp_path, serve, sparse, bad):
    _, fmap = sparse
    exports = Exports()
    server = serve(exports)
    ticket = exports.offer("guest-1", "disk-1", fmap)
    good = wire.Request(ticket, 0, CHUNK, 0)
    raw = {"magic": b"FERRYDC0" + good.encode()[8:],
           "small-chunk": wire.Request(ticket, 0, 4096, 0).encode(),
           "huge-chunk": wire.Request(ticket, 0, 64 * MiB, 0).encode()}[bad]
    sock = plain_connect(server.port, timeout=3)
    try:
        sock.sendall(raw)
        kind, code, _, text = read_frame(sock)
        assert (kind, code) == (wire.Kind.ERROR, wire.ErrorCode.BAD_REQUEST)
        assert text
        assert sock.recv(1) == b""  # and the connection ends there
    finally:
        sock.close()

    fd = open_part(tmp_path / "copy.part", fmap.file_size)
    try:
        with pytest.raises(wire.DataChannelError, match="source data channel"):
            receive(plain_connect(server.port), fd, wire.Request(os.urandom(32), 0, 1, 0))
        # A request refused for its form does not use up the ticket.
        got, _ = receive(plain_connect(server.port), fd, good)
        assert got == fmap.data_bytes
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- 11. stop


def stop_mid_transfer(tmp_path: Path, server: DataServer, exports: Exports, fmap: FileMap,
                      connect: Callable[[], socket.socket], use_splice: bool) -> None:
    ticket = exports.offer("guest-1", "disk-1", fmap)
    fd = open_part(tmp_path / "copy.part", fmap.file_size)
    sock = connect()
    rec = Chunks()
    # 64 KiB chunks at 512 KiB/s: the whole file would take about 6 s.
    sock.sendall(wire.Request(ticket, 0, wire.MIN_CHUNK, 512 * KiB).encode())
    run = Background(Receiver(sock, fd, "disk-1", use_splice=use_splice, on_chunk=rec))
    try:
        assert rec.first.wait(5), "the transfer did not start"
        asked = time.monotonic()
        asyncio.run(server.stop())
        assert run.join(2), "stop() did not end a transfer under way"
        assert isinstance(run.error, wire.DataChannelError), run.error
        assert run.ended_at - asked < 1.5
        assert 0 < len(rec.calls) and sum(n for _, n in rec.calls) < fmap.data_bytes
        with pytest.raises(OSError) as info:  # and nothing listens any more
            socket.create_connection((HOST, server.port), timeout=2).close()
        assert info.value.errno == errno.ECONNREFUSED
    finally:
        run.stop()
        sock.close()
        os.close(fd)


def test_stop_closes_the_listener_and_ends_a_transfer_under_way(tmp_path, serve, sparse):
    _, fmap = sparse
    exports = Exports()
    server = serve(exports)
    stop_mid_transfer(tmp_path, server, exports, fmap, lambda: plain_connect(server.port), True)


def test_stop_ends_a_tls_transfer_under_way(tmp_path, serve, sparse, pki):
    _, fmap = sparse
    exports = Exports()
    server = serve(exports, tls=tls_config(pki, "source-host").server_ssl_context())
    stop_mid_transfer(tmp_path, server, exports, fmap,
                      lambda: tls_connect(server.port, tls_config(pki, "target-host")), False)
