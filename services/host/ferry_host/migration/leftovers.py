"""Removing guests the region placed on another host (after a rescue or a migration).

When a host comes back after its guests were rescued elsewhere, or a source
cleanup did not reach it, RegisterHost's reply names the guests not placed
here. Their local disks and folders are removed; disks on shared storage are
never touched (the rescued server uses them). A stale copy is never started;
one found running is the split-brain case: it is stopped at once and logged
loudly, since two QEMUs on one shared disk corrupt it.
"""

from __future__ import annotations

import asyncio
import logging

from ..guests import Guests
from ..model import GuestState
from .incoming import is_kept

log = logging.getLogger(__name__)


class Leftovers:
    def __init__(self, guests: Guests) -> None:
        self.guests = guests
        self._task: asyncio.Task[None] | None = None
        self._pending: set[str] = set()

    def schedule(self, guest_ids: list[str]) -> None:
        """Called from registration: removes these guests in the background, one run at a time."""
        self._pending.update(g for g in guest_ids if self.guests.exists(g))
        if self._pending and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._run(), name="remove-leftovers")
            self._task.add_done_callback(self._done)

    @staticmethod
    def _done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("removing leftover guests failed", exc_info=task.exception())

    async def _run(self) -> None:
        while self._pending:
            guest_id = self._pending.pop()
            await self.remove(guest_id)

    async def remove(self, guest_id: str) -> None:
        if not self.guests.exists(guest_id):
            return
        if is_kept(self.guests.root / guest_id):
            # A failed migration target kept on purpose (--keep-dest-guest-on-failed).
            log.info("guest %s: kept for debugging, not removed", guest_id)
            return
        try:
            view = await self.guests.get(guest_id)
            if view.state is not GuestState.STOPPED:
                log.error("SPLIT BRAIN: guest %s is %s here but the region placed it on another "
                          "host; stopping this copy now", guest_id, view.state.name)
                await self.guests.stop(guest_id, force=True)
            await self.guests.delete(guest_id, delete_shared_disks=False)
            log.warning("guest %s lives on another host: removed its leftovers here (shared disks "
                        "kept)", guest_id)
        except Exception as exc:  # noqa: BLE001 - retried at the next registration
            log.error("could not remove leftover guest %s: %s", guest_id, exc)
