"""Target side of a cold migration: pull every local disk from the source agent.

Per disk: ExportDisk on the source gives the file's layout and a ticket; a
changed source (another fingerprint than the journal's) restarts from zero.
The partial copy is a sparse file of the source file's size; the data channel
fills it from the journal's resume offset, each chunk verified (receiver.py),
while a checkpointer makes the verified prefix durable in the background
(fdatasync, then the journal). A finished disk is pointed at the same backing
image from this host's cache (`qemu-img rebase -u`), checked with `qemu-img
check` and kept aside; when every disk is done they take their final paths and
only then does the guest get its spec.json here. A failure keeps the verified
part (and its journal) for a retry unless the storage is full; nothing is left
at a final path.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field

import grpc
from ferry_common.channels import open_channel
from ferry_common.errors import FailedPrecondition, from_rpc_error
from ferry_proto.host.v1 import migration_pb2 as pb
from ferry_proto.host.v1 import migration_pb2_grpc as pb_grpc

from .. import convert
from ..storage import StorageError, StorageFull, _run
from . import wire
from .bandwidth import Pacer
from .journal import PART_DIR, Journal, JournalState, remove_work
from .receiver import ChecksumMismatch, Receiver

log = logging.getLogger(__name__)

#: The verified prefix is made durable (fdatasync, then the journal) after this many
#: bytes or seconds, whichever comes first: an interruption loses at most that much work.
JOURNAL_EVERY = 256 * 1024 * 1024
JOURNAL_SECONDS = 2.0
CHECKSUM_RETRIES = 2
#: A busy source (too many copies at once) is asked again every BUSY_RETRY for BUSY_WAIT.
BUSY_RETRY = 2.0
BUSY_WAIT = 300.0
CONNECT_WAIT = 10.0
RPC_TIMEOUT = 60.0
CHUNK_SIZE = 4 * 1024 * 1024
#: Disks copied at once (one bandwidth cap covers them together).
PARALLEL = 4
#: A partial copy not resumed for this long is removed by the next pull on this host.
WORK_TTL = 24 * 3600.0


@dataclass
class Progress:
    total: int = 0
    done: int = 0
    sent: int = 0  # bytes received over the wire in this call
    resumed: int = 0
    started: float = field(default_factory=time.monotonic)
    #: Receivers of disks copied in parallel add from their own threads.
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, *, total: int = 0, done: int = 0, sent: int = 0, resumed: int = 0) -> None:
        with self.lock:
            self.total += total
            self.done += done
            self.sent += sent
            self.resumed += resumed

    def stats(self) -> pb.MigrationStats:
        elapsed = time.monotonic() - self.started
        rate = self.sent / elapsed if elapsed > 0 else 0.0
        left = max(self.total - self.done, 0)
        eta = int(left / rate) if rate > 0 else -1
        return pb.MigrationStats(phase=pb.MIGRATION_PHASE_COPY, disk_bytes_done=self.done,
                                 disk_bytes_total=self.total, throughput_mbps=rate * 8 / 1e6,
                                 eta_seconds=eta, elapsed_ms=int(elapsed * 1000))


class Checkpointer:
    """Makes the verified prefix durable in a background thread, so receiving never
    waits for the disk: snapshot the state, fdatasync, then save the journal."""

    def __init__(self, fd: int, journal: Journal, state: JournalState) -> None:
        self.fd, self.journal, self.state = fd, journal, state
        self.saved = state.verified_bytes
        self._lock = threading.Lock()  # one fdatasync + save at a time
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="copy-checkpoint", daemon=True)
        self._thread.start()

    def advance(self, offset: int, length: int) -> None:
        """Called by the receiver after each verified chunk."""
        self.state = dataclasses.replace(self.state, next_offset=offset + length,
                                         verified_bytes=self.state.verified_bytes + length)
        if self.state.verified_bytes - self.saved >= JOURNAL_EVERY:
            self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(JOURNAL_SECONDS)
            self._wake.clear()
            if self._stop.is_set():
                return
            if self.state.verified_bytes != self.saved:
                try:
                    self.flush()
                except OSError as exc:
                    log.warning("could not checkpoint the partial copy: %s", exc)

    def flush(self) -> None:
        with self._lock:
            snapshot = self.state
            os.fdatasync(self.fd)
            self.journal.save(snapshot)
            self.saved = snapshot.verified_bytes

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join()


class DiskPull:
    def __init__(self, agent, request: pb.PullDisksRequest, copy: pb.DiskCopy,
                 progress: Progress, pacer: Pacer) -> None:
        self.agent = agent
        self.pacer = pacer
        self.req = request
        self.copy = copy
        self.p = progress
        self.storage = agent.storages.get(copy.storage_id, "disks.storage_id")
        self.final = self.storage.disk_path(copy.disk_id)
        self.journal = Journal(self.storage, request.spec.guest_id, copy.disk_id)
        self.disk = next((d for d in request.spec.disks if d.disk_id == copy.disk_id), None)
        #: This disk's share of the progress totals.
        self.total_here = self.done_here = 0
        if self.disk is None:
            raise FailedPrecondition(f"disk {copy.disk_id} is not in the spec", state="BAD_SPEC")

    async def _export(self, stub) -> pb.ExportDiskResponse:
        try:
            return await stub.ExportDisk(
                pb.ExportDiskRequest(guest_id=self.req.spec.guest_id, disk_id=self.copy.disk_id),
                timeout=RPC_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, f"source agent {self.req.source_address}") from exc

    async def run(self, stub) -> None:
        if self.final.exists():
            log.info("disk %s already in place", self.copy.disk_id)
            return
        if self.journal.done.exists():
            # Verified by an earlier attempt: still good only if the source did not change.
            if self.journal.load().fingerprint == (await self._export(stub)).layout.fingerprint:
                log.info("disk %s already copied and the source is unchanged", self.copy.disk_id)
                return
            log.warning("disk %s changed on the source since it was copied; starting over",
                        self.copy.disk_id)
            self.journal.done.unlink(missing_ok=True)
            self.journal.discard()
        retries = 0
        busy_until = time.monotonic() + BUSY_WAIT
        while True:
            try:
                await self._attempt(stub)
                return
            except wire.SourceBusy as exc:
                # The source serves MAX_SENDERS copies at once (a host being drained).
                if time.monotonic() >= busy_until:
                    raise
                log.info("disk %s: %s; asking again", self.copy.disk_id, exc.message)
                await asyncio.sleep(BUSY_RETRY)
            except ChecksumMismatch as exc:
                retries += 1
                if retries > CHECKSUM_RETRIES:
                    raise
                log.warning("%s; resuming from the last verified chunk", exc.message)
            except wire.SourceChanged as exc:
                log.warning("disk %s changed on the source (%s); starting over",
                            self.copy.disk_id, exc)
                self.journal.discard()
                retries += 1
                if retries > CHECKSUM_RETRIES:
                    raise FailedPrecondition(
                        f"disk {self.copy.disk_id} kept changing on the source while it was "
                        "copied", state="SOURCE_CHANGING") from exc

    async def _backing(self, layout: pb.DiskLayout):
        """The same backing image from this host's cache (downloaded if needed), or None."""
        if not layout.backing_image_id:
            return None
        if layout.backing_image_id != self.disk.image_id:
            raise FailedPrecondition(
                f"disk {self.copy.disk_id}: source backing image {layout.backing_image_id} is "
                f"not the spec's {self.disk.image_id}", state="BACKING_MISMATCH")
        return await self.agent.guests.images.ensure(
            self.storage, self.disk.image_id, image_format=self.disk.image_format or "qcow2",
            checksum=self.disk.image_checksum_sha256,
            region_address=self.req.region_address or self.agent.config.region or "")

    def _open_part(self, layout: pb.DiskLayout, fresh: bool) -> int:
        self.journal.dir.mkdir(parents=True, exist_ok=True)
        flags = os.O_RDWR | os.O_CREAT | (os.O_TRUNC if fresh else 0)
        fd = os.open(self.journal.part, flags, 0o600)
        try:
            if os.fstat(fd).st_size != layout.file_size:
                os.ftruncate(fd, layout.file_size)  # holes where the source has them
        except OSError as exc:
            os.close(fd)
            raise StorageError(f"cannot size {self.journal.part}: {exc}") from exc
        return fd

    def _connect(self, address: str) -> socket.socket:
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        try:
            sock = socket.create_connection((host, int(port)), timeout=CONNECT_WAIT)
        except (OSError, ValueError) as exc:
            raise wire.DataChannelError(f"cannot reach the source's data channel at {address}: "
                                        f"{exc}") from exc
        tls = self.agent.config.peer_tls
        stall = self.agent.config.copy_stall_timeout
        try:
            if tls is not None and tls.enabled:
                sock.settimeout(stall)
                wire.tune(sock, stall)
                sock = tls.client_ssl_context().wrap_socket(sock, server_hostname=host)
            else:
                sock.settimeout(None)  # blocking: splice needs it; the kernel times out instead
                wire.set_blocking_timeouts(sock, stall)
        except OSError as exc:
            sock.close()
            raise wire.DataChannelError(f"TLS with the source's data channel failed: {exc}"
                                        ) from exc
        return sock

    async def _attempt(self, stub) -> None:
        started = time.monotonic()
        state = self.journal.load()
        if not self.journal.part.exists():
            state = JournalState()
        export = await self._export(stub)
        exported = time.monotonic()
        layout = export.layout
        if export.checksum != wire.CHECKSUM:
            raise FailedPrecondition(f"source agent checksums with {export.checksum!r}, this "
                                     f"agent with {wire.CHECKSUM!r}", state="VERSION_SKEW")
        if state.fingerprint and state.fingerprint != layout.fingerprint:
            raise wire.SourceChanged("its fingerprint differs from the journal's")
        image = await self._backing(layout)
        fresh = not state.fingerprint
        if fresh:
            self.journal.discard()
            state = JournalState(fingerprint=layout.fingerprint)
        fd = await asyncio.to_thread(self._open_part, layout, fresh)
        # A retry of this disk (checksum, changed source) replaces its share of the totals.
        self.p.add(total=layout.data_bytes - self.total_here,
                   done=state.verified_bytes - self.done_here,
                   resumed=state.verified_bytes if not self.total_here else 0)
        self.total_here, self.done_here = layout.data_bytes, state.verified_bytes
        received = 0
        if state.verified_bytes:
            log.info("disk %s: resuming at offset %d (%d bytes verified before)",
                     self.copy.disk_id, state.next_offset, state.verified_bytes)
        cp = Checkpointer(fd, self.journal, state)
        sock: socket.socket | None = None
        try:
            sock = await asyncio.to_thread(self._connect, export.data_address)
            connected = time.monotonic()

            def on_chunk(offset: int, length: int) -> None:
                nonlocal received
                cp.advance(offset, length)
                received += length
                self.done_here += length
                self.p.add(done=length, sent=length)

            receiver = Receiver(sock, fd, self.copy.disk_id, on_chunk=on_chunk,
                                use_splice=not isinstance(sock, ssl.SSLSocket),
                                start=state.next_offset, end=layout.file_size,
                                pacer=self.pacer)
            # This side paces (one cap for every disk, changeable mid-copy): the source doesn't.
            request = wire.Request(export.ticket, state.next_offset, CHUNK_SIZE, 0)
            job = asyncio.ensure_future(asyncio.to_thread(self._receive, receiver, request))
            try:
                await asyncio.shield(job)
            except asyncio.CancelledError:
                receiver.abort()
                await asyncio.gather(job, return_exceptions=True)
                raise
        finally:
            if sock is not None:
                sock.close()
            cp.close()
            try:
                await asyncio.to_thread(cp.flush)  # what was verified stays for a retry
            except OSError as exc:
                log.warning("could not flush the partial copy: %s", exc)
            os.close(fd)
        copied = time.monotonic()
        await self._finish(layout, image)
        log.info("disk %s copied and verified: %d bytes of data (%d this attempt) in %.3fs "
                 "(export %.3fs, prepare %.3fs, data %.3fs), rebase and check %.3fs",
                 self.copy.disk_id, cp.state.verified_bytes, received, copied - started,
                 exported - started, connected - exported, copied - connected,
                 time.monotonic() - copied)

    @staticmethod
    def _receive(receiver: Receiver, request: wire.Request) -> int:
        receiver.sock.sendall(request.encode())
        return receiver.run()

    async def _finish(self, layout: pb.DiskLayout, image) -> None:
        part = str(self.journal.part)
        try:
            if image is not None:
                await _run("rebase", "-u", "-f", layout.format, "-b", str(image.resolve()),
                           "-F", self.disk.image_format or "qcow2", part)
            if layout.format == "qcow2":
                await _run("check", "-q", "-f", "qcow2", part)
        except StorageError:
            # Every chunk matched, yet the file is not a sound image: never resume from it.
            self.journal.discard()
            raise
        os.replace(self.journal.part, self.journal.done)  # the journal keeps its fingerprint


def sweep_stale_work(agent, keep: str) -> None:
    """Removes partial copies nobody resumed within WORK_TTL (a server deleted or moved
    elsewhere after a failed migration)."""
    now = time.time()
    for s in agent.storages:
        root = s.path / PART_DIR
        if not root.is_dir():
            continue
        for d in root.iterdir():
            try:
                if d.name != keep and now - d.stat().st_mtime > WORK_TTL:
                    log.info("removing stale partial copy %s", d)
                    remove_work(s, d.name)
            except OSError:
                continue


async def _run_pulls(pulls: list[DiskPull], stub, parallel: int) -> None:
    """Runs the pulls, `parallel` at a time; the first failure cancels the others
    (each keeps what it verified) and is raised."""
    gate = asyncio.Semaphore(parallel)

    async def one(pull: DiskPull) -> None:
        async with gate:
            await pull.run(stub)

    tasks = [asyncio.create_task(one(p), name=f"pull-{p.copy.disk_id}") for p in pulls]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    failed = [t for t in tasks if t in done and not t.cancelled() and t.exception()]
    if failed:
        raise failed[0].exception()  # type: ignore[misc]


async def pull_disks(agent, request: pb.PullDisksRequest, progress: Progress, pacer: Pacer):
    """Copies every disk, then registers the guest here; returns its view."""
    await asyncio.to_thread(sweep_stale_work, agent, request.spec.guest_id)
    definition = convert.guest_def(request.spec)
    channel = open_channel(request.source_address, agent.config.peer_tls)
    try:
        try:  # a source agent that is (re)starting: give it a moment to listen
            await asyncio.wait_for(channel.channel_ready(), CONNECT_WAIT)
        except TimeoutError:
            pass  # ExportDisk reports the failure
        stub = pb_grpc.MigrationAgentServiceStub(channel)
        try:
            pulls = [DiskPull(agent, request, copy, progress, pacer) for copy in request.disks]
            await _run_pulls(pulls, stub, parallel=PARALLEL)
            # Every disk verified: only now do they take their final paths.
            for pull in pulls:
                if pull.journal.done.exists():
                    await asyncio.to_thread(shutil.move, pull.journal.done, pull.final)
                    pull.journal.discard()
            for s in agent.storages:
                remove_work(s, request.spec.guest_id)
        except StorageFull:
            for s in agent.storages:
                remove_work(s, request.spec.guest_id)
            raise
    finally:
        await channel.close()
    for d in definition.disks:
        if not agent.guests.disk_path(d).exists():
            raise FailedPrecondition(f"disk {d.disk_id} is missing on this host after the copy",
                                     state="DISK_MISSING", reason="DISK_MISSING")
    return await agent.guests.prepare(definition, request.region_address)
