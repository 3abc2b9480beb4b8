"""The health keeper: holds the host's etcd lease and fences the host when it loses it.

Timeline of an outage (TTL = lease TTL, F = fencing deadline, F < TTL):

    t0   last renewal etcd confirmed        (etcd will expire the key at about t0 + TTL)
    t0+F keeper fences: SIGKILL of every running shared-storage guest
    t0+TTL key deleted; the region waits its confirmation window, checks the
         agent does not answer, and only then restarts the guests elsewhere

So a guest is stopped here before it can be started there. The keeper also
fences at start when its record says the last renewal is older than F (the
keeper itself was down while guests ran), and before every new grant when
the previous renewal is older than F (e.g. the keeper was frozen). A clean
stop (SIGTERM) revokes the lease: the host announces it is going away.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import aetcd
import grpc
from ferry_common.tls import TlsConfig
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..lease import HealthLease, LeaseState
from .fence import FenceResult, fence_guests, health_dir

log = logging.getLogger(__name__)

STATE_FILE = "keeper.json"


@dataclass(frozen=True)
class KeeperConfig:
    host_id: str
    etcd: str
    state_dir: Path
    agent_address: str = ""
    shared_storage: Path | None = None
    shared_storage_id: str = "shared0"
    lease_ttl: int = 10
    #: Seconds without a confirmed renewal after which the host fences; < lease_ttl.
    fence_after: float | None = None
    check_interval: float = 0.2
    #: Region addresses asked before fencing (see `regions_hold`); empty: always fence.
    regions: tuple[str, ...] = ()
    region_timeout: float = 0.5
    #: TLS towards the regions (their gRPC port may require client certificates).
    region_tls: TlsConfig | None = None

    def __post_init__(self) -> None:
        if self.lease_ttl < 2:
            raise ValueError(f"lease_ttl must be at least 2 seconds, got {self.lease_ttl}")
        if self.fence_after is not None and not 0 < self.fence_after < self.lease_ttl:
            raise ValueError(f"fence_after must be within (0, lease_ttl={self.lease_ttl}), "
                             f"got {self.fence_after}")

    @property
    def fence_deadline(self) -> float:
        return self.fence_after if self.fence_after is not None else self.lease_ttl * 0.6

    @property
    def last_chance(self) -> float:
        """Latest moment (seconds without renewal) to fence while a region still
        answers SERVING: that answer may be a moment stale (the region has not yet
        noticed that etcd died), so the keeper gives it until here, still before
        the key expires (TTL) and long before the region may rescue (TTL + window)."""
        return max(self.fence_deadline, self.lease_ttl * 0.9)


GUARD_SERVICE = "ferry.region.v1.HostDownGuard"  # ferry_region.hostdown.GUARD_SERVICE


async def _guard_status(address: str, timeout: float, tls: TlsConfig | None = None) -> str:
    channel = (grpc.aio.secure_channel(address, tls.channel_credentials())
               if tls is not None and tls.enabled else grpc.aio.insecure_channel(address))
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=GUARD_SERVICE), timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    except grpc.aio.AioRpcError as exc:
        return exc.code().name
    finally:
        await channel.close()


class HealthKeeper:
    def __init__(self, config: KeeperConfig) -> None:
        self.config = config
        self.lease = HealthLease(config.etcd, config.host_id, config.lease_ttl, self._value,
                                 on_renewed=self._renewed, before_grant=self._check_overdue)
        self.last_renewed = time.monotonic()  # a fresh keeper gets one deadline to grant
        self.fenced_at: float | None = None   # monotonic time of the fence of this outage
        self.fences: list[list[FenceResult]] = []
        self._watchdog: asyncio.Task | None = None
        self._state_file = health_dir(config.state_dir) / STATE_FILE
        self._holding = False

    def _value(self) -> dict:
        return {"host_id": self.config.host_id, "address": self.config.agent_address,
                "keeper_pid": os.getpid(), "time": datetime.now(UTC).isoformat()}

    # ---- renewals ------------------------------------------------------------

    def _renewed(self) -> None:
        self.last_renewed = time.monotonic()
        if self.fenced_at is not None:
            log.warning("health keeper %s: lease held again; fenced guests stay stopped "
                        "until the region starts them", self.config.host_id)
        self.fenced_at = None
        self._holding = False
        try:
            self._state_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._state_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"last_renewed": time.time(), "pid": os.getpid(),
                                       "lease_ttl": self.config.lease_ttl,
                                       "fence_after": self.config.fence_deadline}))
            os.replace(tmp, self._state_file)
        except OSError as exc:
            log.warning("health keeper: cannot write %s: %s", self._state_file, exc)

    def overdue(self) -> float:
        """Seconds past the fencing deadline (negative: still within it)."""
        return time.monotonic() - self.last_renewed - self.config.fence_deadline

    async def regions_hold(self) -> bool | None:
        """True if every known region answers that it does not see etcd either.

        Then etcd is down for everyone and nobody can rescue this host's guests:
        fencing would only turn an etcd outage into an outage of every guest.
        An error or no answer from any region means fence (False). None: every
        region answered and some still say SERVING - fence, but that answer may
        be stale, so the caller may wait until `last_chance`.
        """
        if not self.config.regions:
            return False
        answers = await asyncio.gather(*(_guard_status(a, self.config.region_timeout,
                                                       self.config.region_tls)
                                         for a in self.config.regions))
        if all(a == "NOT_SERVING" for a in answers):
            return True
        if all(a in ("NOT_SERVING", "SERVING") for a in answers):
            return None
        return False

    async def _check_overdue(self) -> None:
        if self.overdue() > 0 and self.fenced_at is None:
            hold = await self.regions_hold()
            age = time.monotonic() - self.last_renewed
            if hold is None and age < self.config.last_chance:
                return  # ask again at the next check
            if hold:
                if not self._holding:
                    self._holding = True
                    log.warning("health keeper %s: no lease renewal for %.1fs, but no region "
                                "sees etcd either (etcd down for everyone): not fencing",
                                self.config.host_id, time.monotonic() - self.last_renewed)
                return
            if self._holding:
                # The outage everyone saw is over and a region sees etcd again, a moment
                # before this keeper could renew. Its key expired during the outage, so
                # the region only acts after its window: restart the fencing deadline and
                # fence only if this host still cannot renew within it.
                self._holding = False
                self.last_renewed = time.monotonic()
                log.warning("health keeper %s: regions see etcd again; renewing, fencing "
                            "deadline restarted", self.config.host_id)
                return
            await self.fence(f"no lease renewal for {time.monotonic() - self.last_renewed:.1f}s "
                             f"(fencing deadline {self.config.fence_deadline:.1f}s)")

    async def fence(self, reason: str) -> list[FenceResult]:
        if self.fenced_at is not None:
            return []
        self.fenced_at = time.monotonic()
        log.critical("health keeper %s: FENCING this host: %s", self.config.host_id, reason)
        results = await asyncio.to_thread(fence_guests, self.config.state_dir,
                                          self.config.shared_storage_id,
                                          self.config.shared_storage, reason)
        self.fences.append(results)
        killed = [r.guest_id for r in results if r.outcome == "killed"]
        log.critical("health keeper %s: fenced %d guest(s): %s", self.config.host_id,
                     len(killed), ", ".join(killed) or "-")
        return results

    # ---- lifecycle -----------------------------------------------------------

    def _previous_renewal_age(self) -> float | None:
        try:
            data = json.loads(self._state_file.read_text())
            return time.time() - float(data["last_renewed"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    async def start(self) -> None:
        age = self._previous_renewal_age()
        if age is not None and age > self.config.fence_deadline:
            # The keeper was down while guests may have run unprotected: the
            # key may have expired and the region may have rescued them.
            await self.fence(f"keeper start: last renewal {age:.1f}s ago "
                             f"(fencing deadline {self.config.fence_deadline:.1f}s)")
        self.last_renewed = time.monotonic()
        self.fenced_at = None
        self.lease.start()
        self._watchdog = asyncio.create_task(self._watch(), name="fence watchdog")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.config.check_interval)
            try:
                await self._check_overdue()
            except Exception:
                log.exception("health keeper: fencing failed")

    async def shutdown(self, timeout: float = 3.0) -> None:
        """The host is going down on purpose: stop its shared-storage guests, put the key
        once more with `"shutdown": true` (the region then moves the guests only if the
        host's auto_migrate_on_host_shutdown flag says so), and revoke the lease."""
        lease_id = self.lease.lease_id if self.lease.state is LeaseState.HELD else None
        self.fenced_at = None
        await self.fence("host shutdown on purpose: shared-storage guests stop before the "
                         "lease is revoked")
        await self.stop(revoke=lease_id is None)
        if lease_id is None:
            return
        client = aetcd.Client(host=self.lease._host, port=self.lease._port, timeout=timeout)
        try:
            value = {**self._value(), "shutdown": True}
            await asyncio.wait_for(client.put(self.lease.key.encode(), json.dumps(value).encode(),
                                              lease=lease_id), timeout)
            await asyncio.wait_for(client.revoke_lease(lease_id), timeout)
            log.warning("health keeper %s: shutdown announced, lease %x revoked",
                        self.config.host_id, lease_id)
        except Exception as exc:  # noqa: BLE001 - the lease then simply expires
            log.warning("health keeper %s: could not announce the shutdown (%s); the lease "
                        "expires within %ss", self.config.host_id, exc, self.config.lease_ttl)
        finally:
            try:
                await asyncio.wait_for(client.close(), 3)
            except Exception:  # throwing the channel away
                log.debug("closing the etcd client failed", exc_info=True)

    async def stop(self, *, revoke: bool = True) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            try:
                await self._watchdog
            except asyncio.CancelledError:
                pass
            self._watchdog = None
        await self.lease.close(revoke=revoke)
