"""Errors of the host agent: one root, `HostError`.

The root cause of a wrapped error is kept in `__cause__` (`raise ... from`).
`asyncio.CancelledError` is never wrapped: it is not an `Exception` and no
handler here catches `BaseException` without re-raising it.
"""

from __future__ import annotations


class HostError(Exception):
    """Root of every error the host agent raises on purpose."""


class InvalidGuestSpec(HostError):
    """A guest specification that QEMU must never see (bad id, path, size)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class GuestError(HostError):
    """An error about one guest; `guest_id` names it."""

    def __init__(self, guest_id: str, message: str) -> None:
        super().__init__(f"guest {guest_id}: {message}")
        self.guest_id = guest_id


class GuestNotFound(GuestError):
    def __init__(self, guest_id: str) -> None:
        super().__init__(guest_id, "no such running guest on this host")


class GuestAlreadyRunning(GuestError):
    def __init__(self, guest_id: str, pid: int) -> None:
        super().__init__(guest_id, f"already running as pid {pid}")
        self.pid = pid


class QemuStartFailed(GuestError):
    """QEMU exited or never answered on QMP while starting.

    `log_tail` holds the last lines of the guest's qemu.log (QEMU's stderr),
    which is where QEMU says what was wrong.
    """

    def __init__(self, guest_id: str, reason: str, log_tail: str = "") -> None:
        message = reason if not log_tail else f"{reason}; qemu.log ends with:\n{log_tail}"
        super().__init__(guest_id, message)
        self.reason = reason
        self.log_tail = log_tail


class QemuStopFailed(GuestError):
    """The process outlived SIGKILL (stuck in the kernel, e.g. on dead storage)."""


class QmpError(GuestError):
    """A QMP command or the QMP link failed; `__cause__` has the library error."""


class QmpCommandFailed(QmpError):
    """QEMU answered a command with an error; `error_class` is QEMU's class."""

    def __init__(self, guest_id: str, command: str, error_class: str, desc: str) -> None:
        super().__init__(guest_id, f"{command}: {error_class}: {desc}")
        self.command = command
        self.error_class = error_class
        self.desc = desc


class QmpTimeout(QmpError):
    """QEMU did not answer in time (hung or stopped with SIGSTOP)."""


class LinkStateError(QmpError):
    """A QMP link operation was called in a state that does not allow it."""

    def __init__(self, guest_id: str, operation: str, current: object, required: object) -> None:
        super().__init__(
            guest_id, f"{operation} needs the QMP link in {required}, it is {current}"
        )
        self.operation = operation
        self.current = current
        self.required = required


class AcceleratorUnavailable(HostError):
    """The requested accelerator cannot run guests on this host."""
