"""Which region replica acts on host-down: the one holding a lease-backed key in etcd.

Key `/ferry/region/hostdown-leader`, value the replica's id, put only if absent
(a transaction on create revision 0) under a lease of `ttl` seconds refreshed
every ttl/3. A replica counts itself leader only while its last confirmed
refresh is younger than 2/3 of the TTL, so a replica cut off from etcd stops
acting before the key can expire and another one take over. Every replica
keeps watching and recording incidents; only the leader confirms and rescues.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aetcd

log = logging.getLogger(__name__)

LEADER_KEY = b"/ferry/region/hostdown-leader"


def _split(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.removeprefix("http://").rpartition(":")
    return (host or "127.0.0.1").strip("[]"), int(port or 2379)


class Elector:
    def __init__(self, endpoint: str, identity: str, ttl: int = 6) -> None:
        self.host, self.port = _split(endpoint)
        self.identity = identity
        self.ttl = max(int(ttl), 2)
        self._confirmed = 0.0  # monotonic time of the last confirmed grant/refresh as leader
        self._task: asyncio.Task | None = None
        self._lease_id: int | None = None
        self._client: aetcd.Client | None = None
        self.terms = 0

    @property
    def is_leader(self) -> bool:
        return self._lease_id is not None and \
            time.monotonic() - self._confirmed < self.ttl * 2 / 3

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="host-down leader election")

    async def _run(self) -> None:
        interval = self.ttl / 3
        while True:
            try:
                self._client = aetcd.Client(host=self.host, port=self.port, timeout=interval)
                lease = await self._client.lease(self.ttl)
                t = self._client.transactions
                won, _ = await self._client.transaction(
                    compare=[t.create(LEADER_KEY) == 0],
                    success=[t.put(LEADER_KEY, self.identity.encode(), lease)], failure=[])
                if not won:
                    await self._client.revoke_lease(lease.id)
                    await self._close()
                    await asyncio.sleep(interval)
                    continue
                self._lease_id, self._confirmed = lease.id, time.monotonic()
                self.terms += 1
                log.warning("host-down: this region (%s) is the leader", self.identity)
                while True:
                    await asyncio.sleep(interval)
                    reply = await asyncio.wait_for(self._client.refresh_lease(lease.id), interval)
                    if reply is None or reply.TTL <= 0:
                        raise RuntimeError("leader lease expired")
                    self._confirmed = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - etcd trouble: step down, retry
                if self._lease_id is not None:
                    log.warning("host-down: leadership of %s lost: %s", self.identity, exc)
                self._lease_id = None
                await self._close()
                await asyncio.sleep(interval)

    async def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                await asyncio.wait_for(client.close(), 3)  # close can hang on a broken channel
            except Exception:
                log.debug("closing the etcd client failed", exc_info=True)

    async def stop(self) -> None:
        """Steps down (revoking the lease, so another replica takes over at once)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        lease_id, self._lease_id = self._lease_id, None
        if lease_id is not None:
            client = aetcd.Client(host=self.host, port=self.port, timeout=2)
            try:
                await asyncio.wait_for(client.revoke_lease(lease_id), 3)
            except Exception:
                log.debug("revoking the leader lease failed", exc_info=True)
            finally:
                try:
                    await asyncio.wait_for(client.close(), 3)
                except Exception:  # throwing the channel away
                    log.debug("closing the etcd client failed", exc_info=True)
        await self._close()
