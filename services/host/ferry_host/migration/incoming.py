"""Target side of a live migration: disks, QEMU with `-incoming defer`, NBD
exports of the local disks, and the end of it (finish or abort).

A stale incoming guest (a kept failed target, a leftover of a crashed try)
never blocks a new migration: `prepare()` replaces it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ferry_common.errors import FailedPrecondition, Internal
from ferry_proto.host.v1 import migration_pb2 as pb

from .. import convert
from ..model import GuestState
from ..storage import StorageKind
from . import tls

if TYPE_CHECKING:
    from ..app import Agent

log = logging.getLogger(__name__)

FINISH_WAIT_S = 30.0


def agent_host(agent: Agent) -> str:
    return agent.address.rsplit(":", 1)[0]


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


async def _remove_stale(agent: Agent, guest_id: str) -> None:
    if agent.guests.exists(guest_id):
        view = await agent.guests.get(guest_id)
        if view.state is GuestState.RUNNING:
            raise FailedPrecondition(f"guest {guest_id} already runs on this host",
                                     state="running", reason="GUEST_RUNNING")
        log.info("guest %s: replacing a stale incoming guest (%s)", guest_id,
                 view.run_state or "stopped")
        await agent.guests.delete(guest_id, delete_shared_disks=False)
    else:
        await agent.driver.stop(guest_id, 0.0)  # a QEMU nobody knows about


async def prepare(agent: Agent, request: pb.PrepareIncomingRequest) -> pb.PrepareIncomingResponse:
    definition = convert.guest_def(request.spec)
    gid = definition.guest_id
    shared = set(request.shared_disk_ids)
    await _remove_stale(agent, gid)
    await agent.guests.prepare(definition, request.region_address)
    try:
        await agent.guests.start_incoming(gid)
        host = agent_host(agent)
        q = agent.driver.qmp
        tls_creds = ""
        if request.HasField("tls"):
            path = tls.write(tls.folder(agent.config.state_dir, gid, "server"), request.tls,
                             "server")
            tls_creds = await tls.add(agent.driver, gid, path, "server")
        await q(gid, "migrate-set-capabilities",
                capabilities=[{"capability": "events", "state": True}])
        if tls_creds:
            await q(gid, "migrate-set-parameters", **{"tls-creds": tls_creds})
        exports = []
        nbd_address = ""
        local = []
        for d in sorted(definition.disks, key=lambda d: d.index):
            storage = agent.storages.get(d.storage_id)
            if d.disk_id in shared or storage.kind is StorageKind.SHARED:
                continue
            local.append(d)
        if local:
            port = free_port(host)
            args = {"addr": {"type": "inet", "data": {"host": host, "port": str(port)}}}
            if tls_creds:
                args["tls-creds"] = tls_creds
            await q(gid, "nbd-server-start", **args)
            nbd_address = f"{host}:{port}"
            for d in local:
                # QEMU ids must start with a letter; disk ids may not.
                name = f"disk{d.index}"
                await q(gid, "nbd-server-add", device=f"drive-{d.index}", name=name,
                        writable=True)
                exports.append(pb.NbdExport(disk_id=d.disk_id, name=name))
        port = free_port(host)
        uri = f"tcp:{host}:{port}"
        await q(gid, "migrate-incoming", uri=uri)
        view = await agent.guests.get(gid)
    except BaseException:
        await tls.remove(None, gid, tls.folder(agent.config.state_dir, gid, "server"))
        try:
            await agent.guests.delete(gid, delete_shared_disks=False)
        except Exception as exc:  # noqa: BLE001 - the reconciler removes it later
            log.error("guest %s: cleanup of a failed incoming prepare failed: %s", gid, exc)
        raise
    log.info("guest %s: incoming on %s, NBD %s, %d exports", gid, uri, nbd_address or "-",
             len(exports))
    return pb.PrepareIncomingResponse(
        migration_uri=uri, nbd_address=nbd_address, exports=exports,
        disks=convert.guest(view).disks)


async def finish(agent: Agent, guest_id: str) -> pb.FinishIncomingResponse:
    """Waits until the incoming QEMU has loaded the guest; removes the exports."""
    deadline = time.monotonic() + FINISH_WAIT_S
    while True:
        view = await agent.guests.get(guest_id)
        if view.state is GuestState.STOPPED:
            raise FailedPrecondition(f"incoming guest {guest_id} is not running here",
                                     state="stopped", reason="GUEST_NOT_RUNNING")
        if view.run_state not in ("inmigrate", "finish-migrate", "unresponsive"):
            break
        if time.monotonic() > deadline:
            raise Internal(f"incoming guest {guest_id} still {view.run_state} after "
                           f"{FINISH_WAIT_S:.0f}s")
        await asyncio.sleep(0.05)
    try:
        await agent.driver.qmp(guest_id, "nbd-server-stop")
    except Exception as exc:  # noqa: BLE001 - no NBD server (shared disks only, or already stopped)
        log.debug("guest %s: nbd-server-stop: %s", guest_id, exc)
    await tls.remove(agent.driver, guest_id, tls.folder(agent.config.state_dir, guest_id, "server"))
    return pb.FinishIncomingResponse(guest=convert.guest(await agent.guests.get(guest_id)))


KEPT_MARKER = "kept-for-debugging"


def mark_kept(guest_dir: Path) -> None:
    (guest_dir / KEPT_MARKER).write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))


def is_kept(guest_dir: Path) -> bool:
    return (guest_dir / KEPT_MARKER).exists()


async def abort(agent: Agent, guest_id: str, keep_guest: bool) -> None:
    await tls.remove(None, guest_id, tls.folder(agent.config.state_dir, guest_id, "server"))
    if not agent.guests.exists(guest_id):
        await agent.driver.stop(guest_id, 0.0)
        return
    view = await agent.guests.get(guest_id)
    if view.state is GuestState.RUNNING:
        raise FailedPrecondition(f"guest {guest_id} runs on this host; it is no failed "
                                 "incoming guest", state="running", reason="GUEST_RUNNING")
    if keep_guest:
        await agent.guests.stop(guest_id, force=True)
        # The marker keeps the leftover sweep away from it; the next PrepareIncoming
        # of this server on this host replaces it, so it never blocks a retry.
        mark_kept(agent.guests.root / guest_id)
        log.info("guest %s: failed incoming guest kept (stopped) for debugging", guest_id)
        return
    await agent.guests.delete(guest_id, delete_shared_disks=False)
    log.info("guest %s: failed incoming guest removed", guest_id)
