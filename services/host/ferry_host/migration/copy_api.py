"""MigrationAgentService handlers for cold migration disk copy (issue 5)."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from ferry_common.errors import FailedPrecondition, FerryError, InvalidArgument
from ferry_common.validation import check_ident
from ferry_proto.host.v1 import migration_pb2 as pb

from .. import convert
from ..model import GuestState
from . import wire
from .bandwidth import Pacer
from .exporter import TICKET_TTL
from .filemap import describe
from .puller import Progress, pull_disks

log = logging.getLogger(__name__)

TICK = 0.5
MB = 1_000_000


class DiskCopyHandlers:
    """ExportDisk (source side) and PullDisks (target side)."""

    async def ExportDisk(self, request, context):
        check_ident("guest_id", request.guest_id)
        check_ident("disk_id", request.disk_id)
        guests = self.agent.guests
        view = await guests.get(request.guest_id)
        if view.state is not GuestState.STOPPED:
            raise FailedPrecondition(f"guest {request.guest_id} is {view.state.name}; a cold "
                                     "copy needs it stopped", state=view.state.name)
        disk = next((d for d in guests._record(request.guest_id).definition.disks
                     if d.disk_id == request.disk_id), None)
        if disk is None:
            raise InvalidArgument("disk_id",
                                  f"guest {request.guest_id} has no disk {request.disk_id}")
        f = await describe(guests.disk_path(disk))
        ticket = self.agent.exports.offer(request.guest_id, request.disk_id, f.map)
        return pb.ExportDiskResponse(
            layout=pb.DiskLayout(virtual_size=f.virtual_size, format=f.format,
                                 backing_image_id=f.backing_image_id,
                                 data_bytes=f.map.data_bytes, fingerprint=f.map.fingerprint,
                                 file_size=f.map.file_size),
            data_address=self.agent.data_address, ticket=ticket,
            ticket_ttl_seconds=int(TICKET_TTL), checksum=wire.CHECKSUM)

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
            pacer = Pacer(request.max_bandwidth_mb * MB)
            self._pacers[guest_id] = pacer
            job = asyncio.create_task(pull_disks(self.agent, request, progress, pacer),
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
                self._pacers.pop(guest_id, None)
                if not job.done():
                    job.cancel()
                    await asyncio.gather(job, return_exceptions=True)

    @property
    def _pacers(self) -> dict[str, Pacer]:
        return self.__dict__.setdefault("_pull_pacers", {})

    async def SetPullBandwidth(self, request, context):
        check_ident("guest_id", request.guest_id)
        if request.max_bandwidth_mb < 0:
            raise InvalidArgument("max_bandwidth_mb", "must not be negative")
        pacer = self._pacers.get(request.guest_id)
        if pacer is None:
            raise FailedPrecondition(f"no disk copy of guest {request.guest_id} runs here",
                                     state="NOT_PULLING")
        pacer.set_rate(request.max_bandwidth_mb * MB)
        log.info("bandwidth cap of the copy of guest %s set to %s", request.guest_id,
                 f"{request.max_bandwidth_mb} MB/s" if request.max_bandwidth_mb else "unlimited")
        return pb.SetPullBandwidthResponse()
