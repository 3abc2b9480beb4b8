"""Leftovers of a live migration that no agent task owns any more (the agent
restarted mid-migration, or the region gave up): a QEMU still migrating out,
mirror jobs, an NBD server. `reconcile_source()` ends them and makes sure the
guest runs here again; `OutgoingMigration._fail()` does the same for a
migration the agent still owns."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from ferry_host.driver.base import GuestDriver

log = logging.getLogger(__name__)

RECONCILE_INTERVAL_S = 30.0
IN_FLIGHT = ("setup", "active", "pre-switchover", "device", "cancelling")


async def yank_migration_sockets(driver: GuestDriver, guest_id: str) -> None:
    """Forcibly closes the migration stream and the NBD client sockets of the
    mirrors (never the guest's own disks or the QMP socket), so a peer that
    hangs cannot keep QEMU waiting."""
    try:
        instances = await driver.qmp(guest_id, "query-yank")
        chosen = [i for i in instances if i.get("type") in ("migration", "block-node")]
        if chosen:
            await driver.qmp(guest_id, "yank", instances=chosen)
    except Exception as exc:  # noqa: BLE001 - best effort; the cancel follows
        log.debug("guest %s: yank: %s", guest_id, exc)


async def reconcile_source(driver: GuestDriver, guest_id: str) -> bool:
    """Cancels an unowned outgoing migration of `guest_id` in QEMU; True if one ran."""
    try:
        await driver.adopt(guest_id)
        if (await driver.qmp(guest_id, "query-status"))["status"] == "inmigrate":
            return False  # an incoming guest: query-migrate shows the incoming side
        info = await driver.qmp(guest_id, "query-migrate")
    except Exception as exc:  # noqa: BLE001 - no QEMU here: nothing to reconcile
        log.debug("guest %s: nothing to reconcile (%s)", guest_id, exc)
        return False
    status = info.get("status")
    jobs = [j for j in await driver.qmp(guest_id, "query-block-jobs")
            if str(j.get("device", "")).startswith("mirror-")]
    if status not in IN_FLIGHT and not jobs:
        return False
    if status == "completed":
        return False
    log.warning("guest %s: unowned outgoing migration (%s, %d mirrors); cancelling", guest_id,
                status, len(jobs))
    if status in IN_FLIGHT and status != "cancelling":
        await yank_migration_sockets(driver, guest_id)
        await driver.qmp(guest_id, "migrate_cancel")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        info = await driver.qmp(guest_id, "query-migrate")
        if info.get("status") not in IN_FLIGHT:
            break
        await asyncio.sleep(0.05)
    if info.get("status") == "completed":
        log.error("guest %s: migration completed while reconciling; not resuming", guest_id)
        return True
    for job in jobs:
        try:
            await driver.qmp(guest_id, "block-job-cancel", device=job["device"], force=True)
        except Exception as exc:  # noqa: BLE001 - already gone
            log.debug("guest %s: %s: %s", guest_id, job["device"], exc)
    run = (await driver.qmp(guest_id, "query-status"))["status"]
    if run in ("finish-migrate", "paused") and info.get("status") in ("cancelled", "failed"):
        # Paused by the migration (pre-switchover), never by a user: a user's
        # pause is not followed by a migration we abandon.
        await driver.qmp(guest_id, "cont")
        log.info("guest %s: resumed after reconciling", guest_id)
    return True


def owned(agent) -> dict:
    """The agent's outgoing migrations by guest id (kept on the Agent object)."""
    return agent.__dict__.setdefault("_live_outgoing", {})


async def reconcile_once(agent) -> list[str]:
    """One pass: every running guest with an outgoing migration no task owns gets it
    cancelled (and is resumed); TLS folders of finished migrations are removed.
    Returns the reconciled guest ids."""
    from . import tls

    mine = owned(agent)
    done = []
    for guest_id in agent.driver.list_running():
        mig = mine.get(guest_id)
        if mig is not None and mig.active:
            continue
        try:
            if await reconcile_source(agent.driver, guest_id):
                done.append(guest_id)
        except Exception as exc:  # noqa: BLE001 - next pass
            log.warning("guest %s: reconcile failed: %s", guest_id, exc)
    tls_root = agent.config.state_dir.absolute() / "tls"
    if tls_root.is_dir():
        for path in tls_root.iterdir():
            guest_id, _, endpoint = path.name.rpartition("-")
            mig = mine.get(guest_id)
            if endpoint == "client" and not (mig is not None and mig.active):
                await tls.remove(None, guest_id, path)
    return done


async def reconcile_loop(agent, interval: float = RECONCILE_INTERVAL_S) -> None:
    """Runs `reconcile_once` every `interval` seconds until cancelled."""
    while True:
        await asyncio.sleep(interval)
        try:
            await reconcile_once(agent)
        except Exception:
            log.exception("migration reconcile pass failed")


def start_reconciler(agent) -> Callable[[], Awaitable[None]]:
    """Starts the loop; returns the coroutine function that stops it (for shutdown)."""
    task = asyncio.create_task(reconcile_loop(agent), name="migration-reconciler")

    async def stop() -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    return stop
