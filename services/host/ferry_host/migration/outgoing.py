"""Source side of a live migration: mirror local disks to the target's NBD
exports, migrate memory, finish the mirrors at the pre-switchover pause,
continue. Runs as a background task owned by the agent, so a region that
goes away does not stop it; `follow()` streams its samples to any caller.

Before switch-over every failure (cancel, timeout, stall, a target that goes
away) ends in `_fail()`: the migration and the mirrors are cancelled and the
guest runs here again (`cont` if it was running before).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferry_host.driver.base import GuestDriver

from . import tls
from .convergence import MIB, DowntimePolicy
from .progress import Phase, Sample, apply_query_migrate, disk_figures
from .reconcile import yank_migration_sockets

log = logging.getLogger(__name__)

POLL_S = 0.25
EMIT_S = 0.5
UNLIMITED_BPS = 100 * 1024 * MIB  # "unlimited": far above anything a link carries
MIRROR_FINISH_S = 30.0
JOB_EVENTS = ("BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED", "BLOCK_JOB_ERROR",
              "BLOCK_JOB_CANCELLED")


class MigrationFailed(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class MirrorDisk:
    index: int
    export: str
    has_backing: bool

    @property
    def job(self) -> str:
        return f"mirror-{self.index}"

    @property
    def node(self) -> str:
        return f"mirror-nbd-{self.index}"


@dataclass
class Plan:
    guest_id: str
    migration_uri: str
    nbd_address: str
    disks: list[MirrorDisk]
    bandwidth_mb: int
    downtime_ms: int
    quickly_finish: bool
    downtime_cap_ms: int
    completion_s: float
    stall_s: float
    memory_mb: int
    disk_mb: int
    tls_dir: str = ""
    tls_hostname: str = ""
    tls_creds: str = ""


@dataclass
class Outcome:
    ok: bool
    downtime_ms: int = 0
    reason: str = ""
    message: str = ""


@dataclass
class OutgoingMigration:
    plan: Plan
    driver: GuestDriver
    phase: Phase = Phase.STARTING
    sample: Sample = field(default_factory=Sample)
    outcome: Outcome | None = None
    _cancel: asyncio.Event = field(default_factory=asyncio.Event)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _started: float = field(default_factory=time.monotonic)
    _policy: DowntimePolicy | None = None
    _was_running: bool = True

    # --- control ---

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"migrate-{self.plan.guest_id}")

    @property
    def active(self) -> bool:
        return self.outcome is None

    def cancel(self) -> bool:
        if self.outcome is not None:
            return False
        self._cancel.set()
        return True

    async def set_params(self, bandwidth_mb: int | None, downtime_ms: int | None) -> None:
        if bandwidth_mb is not None:
            self.plan.bandwidth_mb = bandwidth_mb
        if downtime_ms is not None:
            self.plan.downtime_ms = downtime_ms
            if self._policy is not None:
                self._policy.limit_ms = downtime_ms
        if self.outcome is None and self.phase is not Phase.STARTING:
            await self._apply_params()

    async def follow(self) -> AsyncIterator[Sample]:
        """Yields the current sample, then one per change, the last when it ends."""
        while True:
            self._changed.clear()
            yield self.sample
            if self.outcome is not None:
                return
            try:
                await asyncio.wait_for(self._changed.wait(), 1.0)
            except TimeoutError:
                pass

    async def wait(self) -> Outcome:
        assert self._task is not None
        await asyncio.shield(self._task)
        assert self.outcome is not None
        return self.outcome

    # --- helpers ---

    async def _qmp(self, cmd: str, **args: Any) -> Any:
        return await self.driver.qmp(self.plan.guest_id, cmd, **args)

    def _bps(self) -> int:
        return self.plan.bandwidth_mb * MIB if self.plan.bandwidth_mb > 0 else UNLIMITED_BPS

    def _mirror_bps(self) -> int:
        if self.plan.bandwidth_mb <= 0:
            return 0  # 0 = unlimited for block jobs
        return max(1, self._bps() // max(1, len(self.plan.disks)))

    async def _apply_params(self) -> None:
        limit = self._policy.limit_ms if self._policy else self.plan.downtime_ms
        await self._qmp("migrate-set-parameters", **{"max-bandwidth": self._bps(),
                                                     "downtime-limit": limit})
        self.sample.downtime_limit_ms = limit
        for d in self.plan.disks:
            try:
                await self._qmp("block-job-set-speed", device=d.job, speed=self._mirror_bps())
            except Exception as exc:  # noqa: BLE001 - a finished job has no speed
                log.debug("guest %s: block-job-set-speed %s: %s", self.plan.guest_id, d.job, exc)

    def _emit(self) -> None:
        self.sample.phase = self.phase
        self.sample.elapsed_ms = int((time.monotonic() - self._started) * 1000)
        self._changed.set()

    def _check_deadlines(self, last_progress: float) -> None:
        now = time.monotonic()
        if self._cancel.is_set():
            raise MigrationFailed("CANCELLED", "live migration cancelled")
        if now - self._started > self.plan.completion_s:
            raise MigrationFailed(
                "NOT_CONVERGING", f"not complete after {self.plan.completion_s:.0f}s "
                f"(expected downtime {self.sample.expected_downtime_ms} ms, limit "
                f"{self.sample.downtime_limit_ms} ms); aborted, the guest runs on the source")
        if now - last_progress > self.plan.stall_s:
            raise MigrationFailed("STALLED", f"no progress for {self.plan.stall_s:.0f}s; aborted")

    async def _jobs(self) -> dict[str, dict[str, Any]]:
        jobs = await self._qmp("query-block-jobs")
        return {j["device"]: j for j in jobs}

    # --- the run ---

    async def _run(self) -> None:
        try:
            downtime = await self._migrate()
            self.outcome = Outcome(ok=True, downtime_ms=downtime)
            if self.plan.tls_dir:
                await tls.remove(None, self.plan.guest_id, Path(self.plan.tls_dir))
            self.phase = Phase.COMPLETED
            log.info("guest %s: live migration completed, downtime %d ms", self.plan.guest_id,
                     downtime)
        except asyncio.CancelledError:
            await self._fail()
            self.outcome = Outcome(ok=False, reason="CANCELLED", message="agent shut down")
            self.phase = Phase.FAILED
            self._emit()
            raise
        except Exception as exc:  # noqa: BLE001 - every failure ends the same way
            if isinstance(exc, MigrationFailed):
                reason, message = exc.reason, exc.message
            else:
                reason, message = "MIGRATION_FAILED", f"{type(exc).__name__}: {exc}"
            if self.plan.tls_dir and reason in ("MIGRATION_FAILED", "MIRROR_FAILED") \
                    and tls.is_tls_error(message):
                reason = "TLS_FAILED"
            log.warning("guest %s: live migration failed (%s): %s", self.plan.guest_id, reason,
                        message)
            await self._fail()
            self.outcome = Outcome(ok=False, reason=reason, message=message)
            self.phase = Phase.FAILED
        self._emit()

    async def _migrate(self) -> int:
        p = self.plan
        status = await self._qmp("query-status")
        if status["status"] not in ("running", "paused"):
            raise MigrationFailed("GUEST_NOT_RUNNING",
                                  f"guest {p.guest_id} is {status['status']}, not running")
        self._was_running = status["status"] == "running"
        info = await self._qmp("query-migrate")
        if info.get("status") in ("active", "pre-switchover", "device", "setup"):
            raise MigrationFailed("BUSY", "another migration of this guest is running in QEMU")
        self._policy = DowntimePolicy(p.downtime_ms, max(p.downtime_cap_ms, p.downtime_ms),
                                      p.quickly_finish)
        if p.tls_dir:
            p.tls_creds = await tls.add(self.driver, p.guest_id, Path(p.tls_dir), "client")
        await self._qmp("migrate-set-capabilities", capabilities=[
            {"capability": "events", "state": True},
            {"capability": "pause-before-switchover", "state": True}])
        params: dict[str, Any] = {"max-bandwidth": self._bps(), "downtime-limit": p.downtime_ms,
                                  "tls-creds": p.tls_creds, "tls-hostname": p.tls_hostname}
        await self._qmp("migrate-set-parameters", **params)
        self.sample.downtime_limit_ms = p.downtime_ms
        self.sample.mem_total = p.memory_mb * MIB
        last_progress = time.monotonic()
        last_key = -1
        # 1. mirrors
        if p.disks:
            self.phase = Phase.MIRROR
            host, port = p.nbd_address.rsplit(":", 1)
            for d in p.disks:
                sync = "top" if d.has_backing else "full"
                if p.tls_creds:
                    # The NBD client with TLS: a blockdev node, then blockdev-mirror.
                    await self._qmp("blockdev-add", **{
                        "driver": "nbd", "node-name": d.node, "export": d.export,
                        "server": {"type": "inet", "host": host, "port": port},
                        "tls-creds": p.tls_creds})
                    await self._qmp("blockdev-mirror", **{
                        "job-id": d.job, "device": f"drive-{d.index}", "target": d.node,
                        "sync": sync, "speed": self._mirror_bps()})
                    continue
                await self._qmp("drive-mirror", **{
                    "job-id": d.job, "device": f"drive-{d.index}",
                    "target": f"nbd:{host}:{port}:exportname={d.export}", "format": "raw",
                    "mode": "existing", "sync": sync, "speed": self._mirror_bps()})
            with self.driver.listener(p.guest_id, JOB_EVENTS) as listener:
                woke = asyncio.Event()

                async def watch_jobs() -> None:
                    async for _event in listener:
                        woke.set()

                watcher = asyncio.create_task(watch_jobs())
                try:
                    last_key, last_progress = await self._mirror_loop(woke, last_key,
                                                                      last_progress)
                finally:
                    watcher.cancel()
                    await asyncio.gather(watcher, return_exceptions=True)
        # 2. memory: MIGRATION events wake the loop at once (the guest is paused
        # at pre-switchover, so no polling delay may be added to its downtime).
        self.phase = Phase.MEMORY
        woke = asyncio.Event()
        marks: dict[str, float] = {}

        async def watch(listener) -> None:
            async for event in listener:
                name = event.get("event")
                if name == "STOP":
                    marks.setdefault("stop", time.monotonic())
                elif name == "MIGRATION":
                    st = event.get("data", {}).get("status", "")
                    marks.setdefault(st, time.monotonic())
                    woke.set()

        with self.driver.listener(p.guest_id, ("MIGRATION", "STOP")) as listener:
            watcher = asyncio.create_task(watch(listener))
            try:
                return await self._memory_loop(woke, marks, last_key, last_progress)
            finally:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)

    async def _mirror_loop(self, woke: asyncio.Event, last_key: int,
                           last_progress: float) -> tuple[int, float]:
        """Until every mirror is READY; block-job events wake it at once."""
        p = self.plan
        while True:
            woke.clear()
            jobs = await self._jobs()
            missing = [d.job for d in p.disks if d.job not in jobs]
            if missing:
                raise MigrationFailed("MIRROR_FAILED",
                                      f"disk mirror {', '.join(missing)} ended before it was "
                                      "ready (target gone?)")
            mine = [jobs[d.job] for d in p.disks]
            self.sample.disk_done, self.sample.disk_total = disk_figures(mine)
            if self.sample.progress_key() != last_key:
                last_key, last_progress = self.sample.progress_key(), time.monotonic()
            self._emit()
            if all(j.get("ready") for j in mine):
                return last_key, last_progress
            self._check_deadlines(last_progress)
            try:
                await asyncio.wait_for(woke.wait(), POLL_S)
            except TimeoutError:
                pass

    async def _memory_loop(self, woke: asyncio.Event, marks: dict[str, float], last_key: int,
                           last_progress: float) -> int:
        p = self.plan
        await self._qmp("migrate", uri=p.migration_uri)
        last_emit = 0.0
        switched = False
        while True:
            woke.clear()
            info = await self._qmp("query-migrate")
            st = info.get("status", "")
            apply_query_migrate(self.sample, info)
            if p.disks and not switched:
                jobs = await self._jobs()
                mine = [jobs[d.job] for d in p.disks if d.job in jobs]
                if len(mine) != len(p.disks) and st not in ("completed", "pre-switchover"):
                    raise MigrationFailed("MIRROR_FAILED", "a disk mirror failed during the "
                                          "memory migration (target gone?)")
                self.sample.disk_done, self.sample.disk_total = disk_figures(mine)
            if st == "completed":
                end = marks.get("completed", time.monotonic())
                own = int((end - marks.get("stop", end)) * 1000)
                return max(own, int(info.get("downtime", 0)))
            if st in ("failed", "cancelled"):
                raise MigrationFailed("MIGRATION_FAILED", "memory migration "
                                      f"{st}: {info.get('error-desc', 'no reason given')}")
            if st == "pre-switchover" and not switched:
                self.phase = Phase.SWITCHOVER
                self._emit()
                await self._switchover()
                switched = True
                continue
            if self.sample.progress_key() != last_key:
                last_key, last_progress = self.sample.progress_key(), time.monotonic()
            assert self._policy is not None
            new_limit = self._policy.next_limit(self.sample.iteration,
                                                self.sample.expected_downtime_ms)
            if new_limit is not None:
                log.info("guest %s: not converging after %d rounds; downtime limit -> %d ms",
                         p.guest_id, self.sample.iteration, new_limit)
                await self._qmp("migrate-set-parameters", **{"downtime-limit": new_limit})
            self.sample.downtime_limit_ms = self._policy.limit_ms
            now = time.monotonic()
            if now - last_emit >= EMIT_S:
                self._emit()
                last_emit = now
            if not switched:
                self._check_deadlines(last_progress)
            try:
                await asyncio.wait_for(woke.wait(), POLL_S)
            except TimeoutError:
                pass

    async def _switchover(self) -> None:
        """The guest is paused: finish the mirrors (block-job-cancel on READY ends
        them COMPLETED with the target consistent), then let QEMU continue."""
        p = self.plan
        for d in p.disks:
            await self._qmp("block-job-cancel", device=d.job)
        deadline = time.monotonic() + MIRROR_FINISH_S
        while True:
            jobs = await self._jobs()
            if not any(d.job in jobs for d in p.disks):
                break
            if time.monotonic() > deadline:
                raise MigrationFailed("MIRROR_FAILED", "mirrors did not finish at switch-over")
            await asyncio.sleep(0.01)
        await self._qmp("migrate-continue", state="pre-switchover")

    async def _fail(self) -> None:
        """Cancels whatever runs and makes sure the guest runs here again."""
        gid = self.plan.guest_id
        try:
            info = await self._qmp("query-migrate")
            if info.get("status") == "completed":
                log.error("guest %s: migration completed while failing; not resuming", gid)
                return
            if info.get("status") not in ("failed", "cancelled", "none", None):
                # A hung peer would block the cancel (and QEMU's main loop, draining
                # NBD requests that never end): yank its sockets first.
                await yank_migration_sockets(self.driver, gid)
                await self._qmp("migrate_cancel")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                info = await self._qmp("query-migrate")
                if info.get("status") in ("failed", "cancelled", "none", "completed", None):
                    break
                await asyncio.sleep(0.05)
            if info.get("status") == "completed":
                log.error("guest %s: migration completed while cancelling", gid)
                return
            jobs = await self._jobs()
            for d in self.plan.disks:
                if d.job in jobs:
                    try:
                        await self._qmp("block-job-cancel", device=d.job, force=True)
                    except Exception as exc:  # noqa: BLE001
                        log.warning("guest %s: cancelling %s: %s", gid, d.job, exc)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                jobs = await self._jobs()
                if not any(d.job in jobs for d in self.plan.disks):
                    break
                await asyncio.sleep(0.05)
            if self.plan.tls_dir:
                for d in self.plan.disks:
                    try:
                        await self._qmp("blockdev-del", **{"node-name": d.node})
                    except Exception as exc:  # noqa: BLE001 - never added
                        log.debug("guest %s: blockdev-del %s: %s", gid, d.node, exc)
                await tls.remove(self.driver, gid, Path(self.plan.tls_dir))
            status = (await self._qmp("query-status"))["status"]
            if self._was_running and status != "running":
                await self._qmp("cont")
                log.info("guest %s: resumed on the source after a failed migration", gid)
        except Exception as exc:  # noqa: BLE001 - reported; the reconciler retries
            log.error("guest %s: cleanup after a failed migration failed: %s", gid, exc)
