"""Target side of a cold migration: pull every local disk from the source agent.

Per disk: ask the source's ReadDisk from the journal's resume point, check the
layout's fingerprint (a changed source restarts from zero), create a qcow2
overlay over the same backing image (from this host's image cache, downloaded
from the region if needed) or a blank qcow2, write each chunk through qemu-nbd
after its SHA-256 matched, flush and journal every few MiB. A finished disk is
checked with `qemu-img check` and kept aside; when every disk is done they
take their final paths and only then does the guest get its spec.json here. A failure keeps the verified part (and its
journal) for a retry unless the storage is full; nothing is left at a final path.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass, field

import grpc
from ferry_common.channels import open_channel
from ferry_common.errors import FailedPrecondition, FerryError, Internal, from_rpc_error
from ferry_proto.host.v1 import migration_pb2 as pb
from ferry_proto.host.v1 import migration_pb2_grpc as pb_grpc

from .. import convert
from ..errors import HostError
from ..storage import StorageFull, _run
from .journal import PART_DIR, Journal, JournalState, remove_work
from .nbd import NbdWriter

log = logging.getLogger(__name__)

#: The verified prefix is made durable (NBD flush = fdatasync, then the journal) after this
#: many bytes or seconds, whichever comes first: an interruption loses at most that much work.
JOURNAL_EVERY = 256 * 1024 * 1024
JOURNAL_SECONDS = 2.0
CHECKSUM_RETRIES = 2
CONNECT_WAIT = 10.0
CHUNK_SIZE = 4 * 1024 * 1024
#: A partial copy not resumed for this long is removed by the next pull on this host.
WORK_TTL = 24 * 3600.0


class ChecksumMismatch(Internal, HostError):
    reason = "CHECKSUM_MISMATCH"


class SourceChanged(Exception):
    pass


@dataclass
class Progress:
    total: int = 0
    done: int = 0
    sent: int = 0  # bytes received over the wire in this call
    resumed: int = 0
    started: float = field(default_factory=time.monotonic)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def stats(self) -> pb.MigrationStats:
        elapsed = time.monotonic() - self.started
        rate = self.sent / elapsed if elapsed > 0 else 0.0
        left = max(self.total - self.done, 0)
        eta = int(left / rate) if rate > 0 else -1
        return pb.MigrationStats(phase=pb.MIGRATION_PHASE_COPY, disk_bytes_done=self.done,
                                 disk_bytes_total=self.total, throughput_mbps=rate * 8 / 1e6,
                                 eta_seconds=eta, elapsed_ms=int(elapsed * 1000))


class DiskPull:
    def __init__(self, agent, request: pb.PullDisksRequest, copy: pb.DiskCopy,
                 progress: Progress) -> None:
        self.agent = agent
        self.req = request
        self.copy = copy
        self.p = progress
        self.storage = agent.storages.get(copy.storage_id, "disks.storage_id")
        self.final = self.storage.disk_path(copy.disk_id)
        self.journal = Journal(self.storage, request.spec.guest_id, copy.disk_id)
        self.disk = next((d for d in request.spec.disks if d.disk_id == copy.disk_id), None)
        if self.disk is None:
            raise FailedPrecondition(f"disk {copy.disk_id} is not in the spec", state="BAD_SPEC")

    async def _source_fingerprint(self, stub) -> str:
        call = stub.ReadDisk(pb.ReadDiskRequest(guest_id=self.req.spec.guest_id,
                                                disk_id=self.copy.disk_id, offset=1 << 62))
        try:
            async for msg in call:
                return msg.layout.fingerprint
        except grpc.aio.AioRpcError as exc:
            raise from_rpc_error(exc, f"source agent {self.req.source_address}") from exc
        finally:
            call.cancel()
        return ""

    async def run(self, stub) -> None:
        if self.final.exists():
            log.info("disk %s already in place", self.copy.disk_id)
            return
        if self.journal.done.exists():
            # Verified by an earlier attempt: still good only if the source did not change.
            if self.journal.load().fingerprint == await self._source_fingerprint(stub):
                log.info("disk %s already copied and the source is unchanged", self.copy.disk_id)
                return
            log.warning("disk %s changed on the source since it was copied; starting over",
                        self.copy.disk_id)
            self.journal.done.unlink(missing_ok=True)
            self.journal.discard()
        for attempt in range(CHECKSUM_RETRIES + 1):
            try:
                await self._attempt(stub)
                return
            except ChecksumMismatch as exc:
                if attempt == CHECKSUM_RETRIES:
                    raise
                log.warning("%s; resuming from the last verified chunk", exc.message)
            except SourceChanged:
                log.warning("disk %s changed on the source; starting over", self.copy.disk_id)
                self.journal.discard()

    async def _create_part(self, layout: pb.DiskLayout) -> None:
        self.journal.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.journal.part.with_suffix(".new")
        tmp.unlink(missing_ok=True)
        argv = ["create", "-q", "-f", "qcow2"]
        if layout.backing_image_id:
            if layout.backing_image_id != self.disk.image_id:
                raise FailedPrecondition(
                    f"disk {self.copy.disk_id}: source backing image {layout.backing_image_id} is "
                    f"not the spec's {self.disk.image_id}", state="BACKING_MISMATCH")
            image = await self.agent.guests.images.ensure(
                self.storage, self.disk.image_id, image_format=self.disk.image_format or "qcow2",
                checksum=self.disk.image_checksum_sha256,
                region_address=self.req.region_address or self.agent.config.region or "")
            argv += ["-b", str(image.resolve()), "-F", self.disk.image_format or "qcow2"]
        await _run(*argv, str(tmp), str(layout.virtual_size))
        os.replace(tmp, self.journal.part)

    async def _attempt(self, stub) -> None:
        started = time.monotonic()
        state = self.journal.load()
        if not self.journal.part.exists():
            state = JournalState()
        call = stub.ReadDisk(pb.ReadDiskRequest(
            guest_id=self.req.spec.guest_id, disk_id=self.copy.disk_id, offset=state.next_offset,
            chunk_size=CHUNK_SIZE,
            max_bandwidth_mb=self.req.max_bandwidth_mb))
        writer: NbdWriter | None = None
        try:
            stream = call.__aiter__()
            first = await stream.__anext__()
            layout = first.layout
            if state.fingerprint and state.fingerprint != layout.fingerprint:
                raise SourceChanged()
            if not state.fingerprint:
                self.journal.discard()
                state = JournalState(fingerprint=layout.fingerprint)
                await self._create_part(layout)
            self.p.total += layout.data_bytes
            self.p.done += state.verified_bytes
            if state.verified_bytes:
                self.p.resumed += state.verified_bytes
                log.info("disk %s: resuming at offset %d (%d bytes verified before)",
                         self.copy.disk_id, state.next_offset, state.verified_bytes)
            writer = NbdWriter(self.journal.part, self.journal.sock)
            await writer.open()
            unflushed = 0
            journaled = time.monotonic()
            async for msg in stream:
                if msg.zero:
                    await writer.write_zeroes(msg.offset, msg.length)
                else:
                    data = msg.data
                    digest = (_sha256(data) if len(data) < 65536
                              else await asyncio.to_thread(_sha256, data))
                    if digest != msg.sha256 or len(data) != msg.length:
                        await writer.flush()
                        self.journal.save(state)
                        raise ChecksumMismatch(
                            f"disk {self.copy.disk_id}: chunk at {msg.offset}+{msg.length} failed "
                            "its SHA-256 check", metadata={"offset": str(msg.offset)})
                    await writer.write(msg.offset, data)
                    state.verified_bytes += msg.length
                    self.p.done += msg.length
                    self.p.sent += msg.length
                    unflushed += msg.length
                    self.p.changed.set()
                state.next_offset = msg.offset + msg.length
                if unflushed >= JOURNAL_EVERY or (
                        unflushed and time.monotonic() - journaled >= JOURNAL_SECONDS):
                    await writer.flush()
                    self.journal.save(state)
                    unflushed, journaled = 0, time.monotonic()
            await writer.flush()
            self.journal.save(state)
            await writer.close()
            writer = None
        except grpc.aio.AioRpcError as exc:
            if writer is not None:
                await _flush_quietly(writer, self.journal, state)
            raise from_rpc_error(exc, f"source agent {self.req.source_address}") from exc
        except (StopAsyncIteration, asyncio.CancelledError, FerryError, SourceChanged):
            if writer is not None:
                await _flush_quietly(writer, self.journal, state)
            raise
        finally:
            call.cancel()
            if writer is not None:
                await writer.close()
        copied = time.monotonic()
        await _run("check", "-q", "-f", "qcow2", str(self.journal.part))
        os.replace(self.journal.part, self.journal.done)  # the journal keeps its fingerprint
        log.info("disk %s copied and verified: %d bytes of data (%d this attempt) in %.2fs, "
                 "qemu-img check %.2fs", self.copy.disk_id, state.verified_bytes, self.p.sent,
                 copied - started, time.monotonic() - copied)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def _flush_quietly(writer: NbdWriter, journal: Journal, state: JournalState) -> None:
    try:
        await asyncio.shield(writer.flush())
        journal.save(state)
    except BaseException as exc:  # noqa: BLE001 - the journal then stays at its last save
        log.warning("could not flush the partial copy: %s", exc)


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


async def pull_disks(agent, request: pb.PullDisksRequest, progress: Progress):
    """Copies every disk, then registers the guest here; returns its view."""
    await asyncio.to_thread(sweep_stale_work, agent, request.spec.guest_id)
    definition = convert.guest_def(request.spec)
    channel = open_channel(request.source_address, agent.config.peer_tls)
    try:
        try:  # a source agent that is (re)starting: give it a moment to listen
            await asyncio.wait_for(channel.channel_ready(), CONNECT_WAIT)
        except TimeoutError:
            pass  # ReadDisk reports the failure
        stub = pb_grpc.MigrationAgentServiceStub(channel)
        try:
            pulls = [DiskPull(agent, request, copy, progress) for copy in request.disks]
            for pull in pulls:
                await pull.run(stub)
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
