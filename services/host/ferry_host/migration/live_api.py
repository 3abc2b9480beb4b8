"""MigrationAgentService handlers for live migration (issue 4)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ferry_common.errors import FailedPrecondition, InvalidArgument
from ferry_common.validation import check_range
from ferry_proto.host.v1 import migration_pb2 as pb

from ..model import GuestState, check_id
from ..storage import StorageKind
from . import incoming, tls
from .convergence import DEFAULT_STALL_S, completion_timeout
from .outgoing import MirrorDisk, OutgoingMigration, Plan
from .reconcile import owned, reconcile_source

if TYPE_CHECKING:
    from ..app import Agent

log = logging.getLogger(__name__)

MAX_BANDWIDTH_MB = 1_000_000
MAX_DOWNTIME_MS = 600_000
DEFAULT_DOWNTIME_MS = 300
DEFAULT_CAP_MS = 1000


class LiveMigrationHandlers:
    """PrepareIncoming, MigrateGuest, SetMigrationParams, CancelMigration,
    FinishIncoming, AbortIncoming, CleanupSource."""

    agent: Agent

    @property
    def _outgoing(self) -> dict[str, OutgoingMigration]:
        return owned(self.agent)

    # --- target ---

    async def PrepareIncoming(self, request, context):
        if not request.HasField("spec"):
            raise InvalidArgument("spec", "must be set")
        check_id("spec.guest_id", request.spec.guest_id)
        return await incoming.prepare(self.agent, request)

    async def FinishIncoming(self, request, context):
        check_id("guest_id", request.guest_id)
        return await incoming.finish(self.agent, request.guest_id)

    async def AbortIncoming(self, request, context):
        check_id("guest_id", request.guest_id)
        await incoming.abort(self.agent, request.guest_id, request.keep_guest)
        return pb.AbortIncomingResponse()

    # --- source ---

    def _plan(self, request) -> Plan:
        gid = request.guest_id
        guests = self.agent.guests
        definition = guests._record(gid).definition  # NOT_FOUND for an unknown guest
        check_range("max_bandwidth_mb", request.max_bandwidth_mb, 0, MAX_BANDWIDTH_MB)
        check_range("downtime_limit_ms", request.downtime_limit_ms, 0, MAX_DOWNTIME_MS)
        check_range("downtime_cap_ms", request.downtime_cap_ms, 0, MAX_DOWNTIME_MS)
        check_range("stall_timeout_seconds", request.stall_timeout_seconds, 0, 86_400)
        check_range("completion_timeout_seconds", request.completion_timeout_seconds, 0, 86_400)
        if not request.migration_uri.startswith("tcp:"):
            raise InvalidArgument("migration_uri", "must be tcp:HOST:PORT")
        exports = {e.disk_id: e.name for e in request.exports}
        disks = []
        disk_mb = 0
        for d in sorted(definition.disks, key=lambda d: d.index):
            storage = self.agent.storages.find(d.storage_id)
            if storage is not None and storage.kind is StorageKind.SHARED:
                continue
            if d.disk_id not in exports:
                raise InvalidArgument("exports", f"no NBD export for local disk {d.disk_id}")
            disks.append(MirrorDisk(d.index, exports[d.disk_id], bool(d.image_id)))
            disk_mb += d.size_mb
        if disks and not request.nbd_address:
            raise InvalidArgument("nbd_address", "needed to mirror local disks")
        downtime = request.downtime_limit_ms or DEFAULT_DOWNTIME_MS
        completion = float(request.completion_timeout_seconds or completion_timeout(
            definition.memory_mb, disk_mb, request.max_bandwidth_mb))
        return Plan(guest_id=gid, migration_uri=request.migration_uri,
                    nbd_address=request.nbd_address, disks=disks,
                    bandwidth_mb=request.max_bandwidth_mb, downtime_ms=downtime,
                    quickly_finish=request.quickly_finish,
                    downtime_cap_ms=request.downtime_cap_ms or DEFAULT_CAP_MS,
                    completion_s=completion,
                    stall_s=float(request.stall_timeout_seconds or DEFAULT_STALL_S),
                    memory_mb=definition.memory_mb, disk_mb=disk_mb)

    async def MigrateGuest(self, request, context):
        check_id("guest_id", request.guest_id)
        gid = request.guest_id
        mig = self._outgoing.get(gid)
        if mig is None or mig.plan.migration_uri != request.migration_uri:
            if mig is not None and mig.active:
                raise FailedPrecondition(f"guest {gid} is migrating to {mig.plan.migration_uri}",
                                         state=mig.phase.name.lower(), reason="MIGRATING")
            plan = self._plan(request)
            if request.HasField("tls"):
                host = request.tls.peer_hostname or request.migration_uri.split(":")[1]
                path = tls.write(tls.folder(self.agent.config.state_dir, gid, "client"),
                                 request.tls, "client")
                plan.tls_dir, plan.tls_hostname = str(path), host
            view = await self.agent.guests.get(gid)
            if view.state not in (GuestState.RUNNING, GuestState.PAUSED) or view.pid == 0:
                raise FailedPrecondition(f"guest {gid} is {view.state.name.lower()} here",
                                         state=view.state.name.lower(),
                                         reason="GUEST_NOT_RUNNING")
            mig = OutgoingMigration(plan, self.agent.driver)
            self._outgoing[gid] = mig
            mig.start()
        # Else: the same migration asked again (region restarted): follow it.
        async for sample in mig.follow():
            out = mig.outcome
            if out is None:
                yield pb.MigrateGuestResponse(stats=sample.to_proto())
            else:
                yield pb.MigrateGuestResponse(stats=sample.to_proto(), done=True,
                                              downtime_ms=out.downtime_ms, error=out.message,
                                              error_reason=out.reason)

    async def SetMigrationParams(self, request, context):
        check_id("guest_id", request.guest_id)
        mig = self._outgoing.get(request.guest_id)
        bw = request.max_bandwidth_mb if request.HasField("max_bandwidth_mb") else None
        dt = request.downtime_limit_ms if request.HasField("downtime_limit_ms") else None
        if bw is not None:
            check_range("max_bandwidth_mb", bw, 0, MAX_BANDWIDTH_MB)
        if dt is not None:
            check_range("downtime_limit_ms", dt, 1, MAX_DOWNTIME_MS)
        if mig is None or not mig.active:
            raise FailedPrecondition(f"guest {request.guest_id} is not migrating",
                                     state="idle", reason="NOT_MIGRATING")
        await mig.set_params(bw, dt)
        return pb.SetMigrationParamsResponse(stats=mig.sample.to_proto())

    async def CancelMigration(self, request, context):
        check_id("guest_id", request.guest_id)
        mig = self._outgoing.get(request.guest_id)
        if mig is not None and mig.cancel():
            await mig.wait()
            return pb.CancelMigrationResponse(cancelled=True)
        if mig is None or not mig.active:
            # Not ours (an earlier agent process started it): end it in QEMU.
            cancelled = await reconcile_source(self.agent.driver, request.guest_id)
            return pb.CancelMigrationResponse(cancelled=cancelled)
        return pb.CancelMigrationResponse(cancelled=False)

    async def CleanupSource(self, request, context):
        check_id("guest_id", request.guest_id)
        gid = request.guest_id
        if not self.agent.guests.exists(gid):
            await self.agent.driver.stop(gid, 0.0)
            return pb.CleanupSourceResponse()
        view = await self.agent.guests.get(gid)
        if view.state is GuestState.RUNNING:
            raise FailedPrecondition(f"guest {gid} still runs here; it was not migrated away",
                                     state="running", reason="GUEST_RUNNING")
        mig = self._outgoing.get(gid)
        if mig is not None and mig.active:
            raise FailedPrecondition(f"guest {gid} is still migrating", state="migrating",
                                     reason="MIGRATING")
        self._outgoing.pop(gid, None)
        await self.agent.guests.delete(gid, delete_shared_disks=False)
        return pb.CleanupSourceResponse()
