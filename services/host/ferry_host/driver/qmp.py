"""`QmpDriver`: guests as QEMU processes driven over QMP.

Each guest has a state folder `<state_dir>/guests/<id>/` with `qmp.sock`,
`qemu.pid` and `qemu.log` (QEMU's stdout and stderr, appended).  QEMU runs
in its own session, so it outlives the agent; a new agent finds it again
through the pidfile and checks /proc/<pid>/cmdline before trusting it.
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import signal
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qemu.qmp.events import EventListener

from ferry_host.driver.base import GuestDriver, GuestRuntime, GuestSpec
from ferry_host.driver.cmdline import QEMU_BINARY, GuestPaths, build_argv, is_our_qemu
from ferry_host.driver.link import LinkState, QmpLink
from ferry_host.driver.process import QemuProcess
from ferry_host.errors import (
    GuestAlreadyRunning,
    GuestNotFound,
    QemuStartFailed,
    QemuStopFailed,
    QmpError,
)

log = logging.getLogger(__name__)

KILL_GRACE = 5.0  # SIGKILL'ed process should be gone well within this


@dataclass
class _Guest:
    paths: GuestPaths
    process: QemuProcess
    link: QmpLink

    def runtime(self, guest_id: str, run_state: str) -> GuestRuntime:
        return GuestRuntime(guest_id, self.process.pid, self.paths.qmp_socket, run_state)


def _log_tail(path: Path, offset: int, lines: int = 20) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


class QmpDriver(GuestDriver):
    def __init__(
        self,
        state_dir: Path,
        *,
        kvm_cpu_model: str = "host",
        qemu_binary: str = QEMU_BINARY,
        start_timeout: float = 30.0,
        command_timeout: float = 30.0,
    ) -> None:
        self.state_dir = Path(state_dir).absolute()
        self.kvm_cpu_model = kvm_cpu_model  # from kvm.probe_kvm() on the agent
        self.qemu_binary = qemu_binary
        self.start_timeout = start_timeout
        self.command_timeout = command_timeout
        self._guests: dict[str, _Guest] = {}
        # start/stop/adopt of one guest never interleave.
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def paths(self, guest_id: str) -> GuestPaths:
        return GuestPaths.of(self.state_dir, guest_id)

    # ---- lifecycle ---------------------------------------------------------

    async def start(self, spec: GuestSpec, incoming: str | None = None) -> GuestRuntime:
        spec.validate()
        paths = self.paths(spec.id)
        async with self._locks[spec.id]:
            await self._check_not_running(spec.id, paths)
            paths.root.mkdir(parents=True, exist_ok=True)
            spec.serial_log.parent.mkdir(parents=True, exist_ok=True)
            self._remove_runtime_files(paths)
            argv = build_argv(spec, paths, incoming, self.kvm_cpu_model, self.qemu_binary)
            log_offset = self._log_header(paths, argv)
            try:
                process = QemuProcess.spawn(argv, paths.log)
            except OSError as exc:
                raise QemuStartFailed(spec.id, f"cannot run {argv[0]}: {exc}") from exc
            link = QmpLink(spec.id, paths.qmp_socket, self.command_timeout)
            try:
                await self._await_qmp(spec.id, process, link, paths, log_offset)
                status = await link.execute("query-status")
            except BaseException as exc:
                # Also on cancellation: a half-started QEMU must not linger.
                await self._kill(process)
                await link.close(timeout=1.0)
                process.close()
                self._remove_runtime_files(paths)
                if isinstance(exc, QmpError):
                    tail = _log_tail(paths.log, log_offset)
                    raise QemuStartFailed(spec.id, f"QMP failed while starting: {exc}", tail) from exc
                raise
            guest = _Guest(paths, process, link)
            self._guests[spec.id] = guest
            log.info("guest %s (%s): started, pid %d, %s", spec.id, spec.name, process.pid,
                     status["status"])
            return guest.runtime(spec.id, status["status"])

    async def _check_not_running(self, guest_id: str, paths: GuestPaths) -> None:
        guest = self._guests.get(guest_id)
        if guest is not None:
            if guest.process.alive():
                raise GuestAlreadyRunning(guest_id, guest.process.pid)
            await self._forget(guest_id)
        process = self._find_process(guest_id, paths)
        if process is not None:
            process.close()
            raise GuestAlreadyRunning(guest_id, process.pid)

    def _log_header(self, paths: GuestPaths, argv: list[str]) -> int:
        """Mark the start in qemu.log; returns where this run's output begins."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        with open(paths.log, "ab") as f:
            f.write(f"[ferry {stamp}] starting: {shlex.join(argv)}\n".encode())
            return f.tell()

    async def _await_qmp(self, guest_id: str, process: QemuProcess, link: QmpLink,
                         paths: GuestPaths, log_offset: int) -> None:
        """Wait until QEMU answers on QMP, or fail as soon as it exits.

        QEMU creates the socket early but sends the QMP greeting only from
        its main loop, i.e. after every device (and disk) was set up.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        while True:
            if not process.alive():
                raise QemuStartFailed(guest_id, f"QEMU exited with status {process.returncode}",
                                      _log_tail(paths.log, log_offset))
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise QemuStartFailed(guest_id, f"no QMP answer within {self.start_timeout:.0f}s",
                                      _log_tail(paths.log, log_offset))
            if paths.qmp_socket.exists():
                try:
                    await link.connect(timeout=remaining)
                    return
                except QmpError:
                    if process.alive() and loop.time() >= deadline:
                        raise
            await process.wait_exit(0.05)  # doubles as the poll interval

    async def stop(self, guest_id: str, timeout: float = 10.0) -> bool:
        """QMP `quit`, then SIGTERM, then SIGKILL; returns within about
        `timeout` + 5 s whatever state QEMU is in (even SIGSTOPped).
        `timeout` <= 0 kills at once."""
        paths = self.paths(guest_id)
        async with self._locks[guest_id]:
            guest = self._guests.pop(guest_id, None)
            if guest is not None:
                process, link = guest.process, guest.link
            else:
                found = self._find_process(guest_id, paths)
                if found is None:
                    self._remove_runtime_files(paths)
                    return False
                process, link = found, None
            try:
                await self._end_process(guest_id, process, link, timeout)
            finally:
                if link is not None:
                    await link.close(timeout=1.0)
                # A survivor keeps its pidfile: list_running() still shows
                # it and a later stop() can try again.
                if not process.alive():
                    self._remove_runtime_files(paths)
                process.close()
            log.info("guest %s: stopped", guest_id)
            return True

    async def _end_process(self, guest_id: str, process: QemuProcess, link: QmpLink | None,
                           timeout: float) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        if timeout > 0 and link is not None and link.state is LinkState.CONNECTED and process.alive():
            try:
                # `system_powerdown` needs ACPI in the guest; quit does not.
                await link.execute("quit", timeout=min(2.0, timeout * 0.3))
            except QmpError as exc:
                log.info("%s; falling back to signals", exc)
            await process.wait_exit(start + timeout * 0.5 - loop.time())
        if timeout > 0 and process.alive():
            log.info("guest %s: sending SIGTERM to pid %d", guest_id, process.pid)
            process.send_signal(signal.SIGTERM)
            await process.wait_exit(start + timeout * 0.8 - loop.time())
        if process.alive():
            log.warning("guest %s: sending SIGKILL to pid %d", guest_id, process.pid)
            process.send_signal(signal.SIGKILL)
            if not await process.wait_exit(max(timeout * 0.2, KILL_GRACE)):
                raise QemuStopFailed(guest_id, f"pid {process.pid} survived SIGKILL")

    async def _kill(self, process: QemuProcess) -> None:
        process.send_signal(signal.SIGKILL)
        await process.wait_exit(KILL_GRACE)

    # ---- inspection and re-attachment -------------------------------------

    async def status(self, guest_id: str) -> GuestRuntime | None:
        """Run state of an attached guest; None if not running or not
        attached (after an agent restart, call `adopt()` first)."""
        guest = self._guests.get(guest_id)
        if guest is None or not guest.process.alive():
            return None
        status = await guest.link.execute("query-status")
        return guest.runtime(guest_id, status["status"])

    async def adopt(self, guest_id: str) -> GuestRuntime | None:
        paths = self.paths(guest_id)
        async with self._locks[guest_id]:
            guest = self._guests.get(guest_id)
            if guest is not None:
                if guest.process.alive():
                    status = await guest.link.execute("query-status")
                    return guest.runtime(guest_id, status["status"])
                await self._forget(guest_id)
            process = self._find_process(guest_id, paths)
            if process is None:
                self._remove_runtime_files(paths)
                return None
            link = QmpLink(guest_id, paths.qmp_socket, self.command_timeout)
            try:
                await link.connect(timeout=min(self.command_timeout, 10.0))
                status = await link.execute("query-status")
            except BaseException:
                await link.close(timeout=1.0)
                process.close()
                raise
            guest = _Guest(paths, process, link)
            self._guests[guest_id] = guest
            log.info("guest %s: adopted pid %d, %s", guest_id, process.pid, status["status"])
            return guest.runtime(guest_id, status["status"])

    def _find_process(self, guest_id: str, paths: GuestPaths) -> QemuProcess | None:
        """The live QEMU named by the guest's pidfile, if it really is ours."""
        try:
            pid = int(paths.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return QemuProcess.attach(pid, lambda argv: is_our_qemu(argv, guest_id, paths))

    def list_running(self) -> list[str]:
        running = {gid for gid, g in self._guests.items() if g.process.alive()}
        guests_dir = self.state_dir / "guests"
        if guests_dir.is_dir():
            for folder in guests_dir.iterdir():
                if folder.name in running or not folder.is_dir():
                    continue
                process = self._find_process(folder.name, self.paths(folder.name))
                if process is not None:
                    process.close()
                    running.add(folder.name)
        return sorted(running)

    # ---- raw QMP access for the migration code -----------------------------

    def _attached(self, guest_id: str) -> _Guest:
        guest = self._guests.get(guest_id)
        if guest is None:
            raise GuestNotFound(guest_id)
        return guest

    async def qmp(self, guest_id: str, cmd: str, **args: Any) -> Any:
        return await self._attached(guest_id).link.execute(cmd, args)

    @contextmanager
    def listener(self, guest_id: str, names: tuple[str, ...] = ()) -> Iterator[EventListener]:
        with self._attached(guest_id).link.listener(names) as listener:
            yield listener

    # ---- teardown ----------------------------------------------------------

    async def _forget(self, guest_id: str) -> None:
        guest = self._guests.pop(guest_id, None)
        if guest is not None:
            await guest.link.close(timeout=1.0)
            guest.process.close()

    async def detach_all(self) -> None:
        for guest_id in list(self._guests):
            await self._forget(guest_id)

    @staticmethod
    def _remove_runtime_files(paths: GuestPaths) -> None:
        # qemu.log and the serial log stay: they are the guest's history.
        for path in (paths.qmp_socket, paths.pidfile):
            path.unlink(missing_ok=True)
