"""A QEMU process handle built on a pidfd.

A pidfd names one process for good: signals sent through it can never hit
an unrelated process that reused the pid, and it becomes readable when the
process exits, whether or not it is our child (an adopted QEMU is not).
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
from collections.abc import Callable
from pathlib import Path


def read_cmdline(pid: int) -> list[str]:
    """The argv of a live process; [] if gone or a zombie (empty cmdline)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]]


class QemuProcess:
    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = pid
        self._pidfd: int | None = pidfd
        self.returncode: int | None = None

    @classmethod
    def spawn(cls, argv: list[str], log_path: Path) -> QemuProcess:
        """Start QEMU with stdout and stderr appended to `log_path`."""
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            # setsid: QEMU must survive the agent (no SIGINT/SIGHUP through
            # the agent's terminal or process group): an agent restart is not
            # a guest restart.  posix_spawn rather than Popen: the handle is
            # the pidfd, reaped with waitid(P_PIDFD), so no Popen object can
            # complain or reap behind our back once the guest is handed over.
            pid = os.posix_spawnp(
                argv[0],
                argv,
                dict(os.environ),
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, log_fd, 1),
                    (os.POSIX_SPAWN_DUP2, log_fd, 2),
                ],
                setsid=True,
            )
        finally:
            os.close(log_fd)
        return cls(pid, os.pidfd_open(pid))

    @classmethod
    def attach(cls, pid: int, is_ours: Callable[[list[str]], bool]) -> QemuProcess | None:
        """Handle to an existing process, if its cmdline passes `is_ours`."""
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            return None
        # Check after opening: the pidfd now pins the process we verify, so a
        # pid reused between the check and the open cannot slip through.
        if not is_ours(read_cmdline(pid)):
            os.close(pidfd)
            return None
        return cls(pid, pidfd)

    def alive(self) -> bool:
        if self._pidfd is None:
            return False
        poller = select.poll()  # not select(): fds above 1023 are fine
        poller.register(self._pidfd, select.POLLIN)
        if poller.poll(0):
            self._reap()
            return False
        return True

    def send_signal(self, sig: signal.Signals) -> None:
        if self._pidfd is None:
            return
        try:
            signal.pidfd_send_signal(self._pidfd, sig)
        except ProcessLookupError:
            pass  # already exited

    async def wait_exit(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the exit; True if it exited."""
        if not self.alive():
            return True
        assert self._pidfd is not None
        loop = asyncio.get_running_loop()
        exited: asyncio.Future[None] = loop.create_future()
        fd = self._pidfd

        def on_exit() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(fd, on_exit)
        try:
            await asyncio.wait_for(exited, max(timeout, 0.0))
        except TimeoutError:
            return False
        finally:
            loop.remove_reader(fd)
        self._reap()
        return True

    def _reap(self) -> None:
        # Only our own child can be reaped (an adopted orphan belongs to
        # init); P_PIDFD reaps exactly this process, never a namesake.
        if self._pidfd is None or self.returncode is not None:
            return
        try:
            result = os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            return
        if result is not None:
            killed = result.si_code in (os.CLD_KILLED, os.CLD_DUMPED)
            self.returncode = -result.si_status if killed else result.si_status

    def close(self) -> None:
        """Release the pidfd (the process itself is left alone)."""
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
