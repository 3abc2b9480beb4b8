"""The image cache: `<storage>/imagecache/<image_id>`, filled from the region.

An image is streamed from the region's `ImageService.DownloadImage` into a
temporary file, its SHA-256 checked, then renamed into place, so a cached
image is always whole and verified. One download at a time per image: an
asyncio lock inside this agent and a lock file beside the image for the other
agents sharing the storage. The checksum of a verified image is kept in a
hidden `.<image_id>.sha256` beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from ferry_common.channels import open_channel
from ferry_common.errors import FailedPrecondition, FerryError, Unavailable, from_rpc_error
from ferry_common.tls import TlsConfig
from ferry_proto.region.v1 import image_service_pb2, image_service_pb2_grpc, resources_pb2

from .errors import HostError
from .storage import Storage, StorageError, StorageFull

log = logging.getLogger(__name__)

CHUNK_TIMEOUT = 60.0  # seconds without a message before a download is given up
LOCK_POLL = 0.05
_FORMATS = {resources_pb2.DISK_FORMAT_QCOW2: "qcow2", resources_pb2.DISK_FORMAT_RAW: "raw"}


class ImageChecksumMismatch(FailedPrecondition, HostError):
    """The downloaded (or cached) image does not have the expected SHA-256."""

    reason = "IMAGE_CHECKSUM_MISMATCH"


@contextlib.asynccontextmanager
async def file_lock(path: Path) -> AsyncIterator[None]:
    """An exclusive flock on `path`, awaited without blocking the event loop."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(LOCK_POLL)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1024 * 1024), b""):
            h.update(block)
    return h.hexdigest()


class ImageCache:
    def __init__(self, *, peer_tls: TlsConfig | None = None) -> None:
        self._peer_tls = peer_tls
        self._locks: dict[str, asyncio.Lock] = {}

    @staticmethod
    def path(storage: Storage, image_id: str) -> Path:
        return storage.imagecache_dir / image_id

    async def ensure(self, storage: Storage, image_id: str, *, image_format: str,
                     checksum: str, region_address: str) -> Path:
        """The cached image's path, downloading and verifying it first if needed."""
        final = self.path(storage, image_id)
        lock = self._locks.setdefault(str(final), asyncio.Lock())
        async with lock:
            storage.imagecache_dir.mkdir(parents=True, exist_ok=True)
            async with file_lock(storage.imagecache_dir / f".{image_id}.lock"):
                if final.exists():
                    await self._check_cached(final, checksum.lower())
                    return final
                await self._download(final, image_id, image_format, checksum.lower(),
                                     region_address)
                return final

    @staticmethod
    def _sidecar(final: Path) -> Path:
        return final.parent / f".{final.name}.sha256"

    async def _check_cached(self, final: Path, expected: str) -> None:
        if not expected:
            return
        sidecar = self._sidecar(final)
        try:
            actual = sidecar.read_text().strip()
        except FileNotFoundError:
            actual = await asyncio.to_thread(sha256_file, final)
            sidecar.write_text(actual + "\n")
        if actual != expected:
            raise ImageChecksumMismatch(
                f"cached image {final.name} has SHA-256 {actual}, expected {expected}",
                metadata={"image_id": final.name, "expected": expected, "actual": actual})

    async def _download(self, final: Path, image_id: str, image_format: str, expected: str,
                        region_address: str) -> None:
        for stale in final.parent.glob(f".{image_id}.*.part"):
            stale.unlink(missing_ok=True)  # left by a crashed download; we hold the lock
        tmp = final.parent / f".{image_id}.{secrets.token_hex(4)}.part"
        log.info("downloading image %s from %s", image_id, region_address)
        try:
            async with open_channel(region_address, self._peer_tls) as channel:
                stub = image_service_pb2_grpc.ImageServiceStub(channel)
                call = stub.DownloadImage(image_service_pb2.DownloadImageRequest(id=image_id))
                try:
                    actual, size = await self._receive(call, tmp, image_id, image_format,
                                                       expected)
                except grpc.aio.AioRpcError as exc:
                    raise from_rpc_error(exc, f"region {region_address}") from exc
                finally:
                    call.cancel()
            self._sidecar(final).write_text(actual + "\n")
            os.replace(tmp, final)
            log.info("cached image %s (%d bytes, sha256 %s)", image_id, size, actual)
        except FerryError:
            raise
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise StorageFull(f"no space left for image {image_id} in {final.parent}") from exc
            raise StorageError(f"cannot write image {image_id}: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)

    async def _receive(self, call, tmp: Path, image_id: str, image_format: str,
                       expected: str) -> tuple[str, int]:
        h = hashlib.sha256()
        size = 0
        declared_size = -1
        first = True
        with open(tmp, "xb") as f:
            while True:
                try:
                    msg = await asyncio.wait_for(call.read(), CHUNK_TIMEOUT)
                except TimeoutError:
                    raise Unavailable(f"image {image_id}: the region sent nothing for "
                                      f"{CHUNK_TIMEOUT:.0f} s") from None
                if msg is grpc.aio.EOF:
                    break
                if first:
                    first = False
                    if msg.HasField("image"):
                        expected, declared_size = self._check_metadata(
                            msg.image, image_id, image_format, expected)
                if msg.chunk:
                    h.update(msg.chunk)
                    f.write(msg.chunk)
                    size += len(msg.chunk)
            f.flush()
            await asyncio.to_thread(os.fsync, f.fileno())
        actual = h.hexdigest()
        if declared_size >= 0 and size != declared_size:
            raise ImageChecksumMismatch(
                f"image {image_id}: received {size} bytes, the region declared {declared_size}",
                metadata={"image_id": image_id})
        if not expected:
            raise FailedPrecondition(f"image {image_id}: no SHA-256 to verify it against",
                                     reason="IMAGE_CHECKSUM_MISSING")
        if actual != expected:
            raise ImageChecksumMismatch(
                f"image {image_id}: downloaded data has SHA-256 {actual}, expected {expected}",
                metadata={"image_id": image_id, "expected": expected, "actual": actual})
        return actual, size

    @staticmethod
    def _check_metadata(image: resources_pb2.Image, image_id: str, image_format: str,
                        expected: str) -> tuple[str, int]:
        if image.id and image.id != image_id:
            raise FerryError(f"region sent image {image.id!r} for {image_id!r}",
                             reason="IMAGE_MISMATCH")
        region_fmt = _FORMATS.get(image.format)
        if region_fmt and image_format and region_fmt != image_format:
            raise FailedPrecondition(
                f"image {image_id} is {region_fmt}, the request says {image_format}",
                reason="IMAGE_FORMAT_MISMATCH", metadata={"image_id": image_id})
        region_sum = image.checksum_sha256.lower()
        if expected and region_sum and region_sum != expected:
            raise ImageChecksumMismatch(
                f"image {image_id}: the region's SHA-256 is {region_sum}, expected {expected}",
                metadata={"image_id": image_id, "expected": expected, "actual": region_sum})
        return expected or region_sum, image.size_bytes if image.size_bytes > 0 else -1
