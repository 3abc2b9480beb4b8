"""MigrationAgentService handlers for cold migration disk copy (issue 5)."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from ferry_common.errors import FerryError, InvalidArgument
from ferry_common.validation import check_ident
from ferry_proto.host.v1 import migration_pb2 as pb

from .. import convert
from .puller import Progress, pull_disks
from .reader import read_disk

log = logging.getLogger(__name__)

TICK = 0.5


class DiskCopyHandlers:
    """ReadDisk (source side) and PullDisks (target side)."""

    async def ReadDisk(self, request, context):
        check_ident("guest_id", request.guest_id)
        check_ident("disk_id", request.disk_id)
        stream = read_disk(self.agent, request)
        try:
            async for msg in stream:
                yield msg
        finally:
            await stream.aclose()

    async def PullDisks(self, request, context):
        if not request.HasField("spec"):
            raise InvalidArgument("spec", "must be set")
        if not request.source_address:
            raise InvalidArgument("source_address", "must be set")
        if request.max_bandwidth_mb < 0:
            raise InvalidArgument("max_bandwidth_mb", "must not be negative")
        guest_id = request.spec.guest_id
        check_ident("spec.guest_id", guest_id)
        locks = self.__dict__.setdefault("_pull_locks", defaultdict(asyncio.Lock))
        async with locks[guest_id]:
            progress = Progress()
            job = asyncio.create_task(pull_disks(self.agent, request, progress),
                                      name=f"pull-{guest_id}")
            try:
                while not job.done():
                    await asyncio.wait({job}, timeout=TICK)
                    if not job.done():
                        yield pb.PullDisksResponse(stats=progress.stats(),
                                                   resumed_bytes=progress.resumed)
                try:
                    view = job.result()
                except FerryError as exc:
                    log.warning("pull of guest %s failed: %s", guest_id, exc.message)
                    yield pb.PullDisksResponse(stats=progress.stats(), done=True,
                                               resumed_bytes=progress.resumed,
                                               error=exc.message, error_reason=exc.reason)
                    return
                except Exception as exc:
                    log.exception("pull of guest %s crashed", guest_id)
                    yield pb.PullDisksResponse(stats=progress.stats(), done=True,
                                               resumed_bytes=progress.resumed,
                                               error=f"{type(exc).__name__}: {exc}",
                                               error_reason="INTERNAL")
                    return
                yield pb.PullDisksResponse(stats=progress.stats(), done=True,
                                           resumed_bytes=progress.resumed,
                                           disks=convert.guest(view).disks)
            finally:
                if not job.done():
                    job.cancel()
                    await asyncio.gather(job, return_exceptions=True)
