"""Driver errors (`ferry_host.errors`) as canonical gRPC errors (`ferry_common.errors`).

The driver's `HostError` family says what went wrong with QEMU; the agent's
API must answer with a canonical code and a reason. `driver_errors()` wraps
every driver call in the guest registry and re-raises with the original as
`__cause__`; `CancelledError` passes untouched (it is no `Exception`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ferry_common.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    FerryError,
    Internal,
    InvalidArgument,
    NotFound,
)

from .errors import (
    AcceleratorUnavailable,
    GuestAlreadyRunning,
    GuestNotFound,
    HostError,
    InvalidGuestSpec,
    QemuStartFailed,
    QemuStopFailed,
    QmpCommandFailed,
    QmpTimeout,
)


def to_ferry(exc: HostError) -> FerryError:
    """The canonical error for a driver error."""
    if isinstance(exc, FerryError):
        return exc
    gid = getattr(exc, "guest_id", "")
    meta = {"guest_id": gid} if gid else {}
    if isinstance(exc, InvalidGuestSpec):
        return InvalidArgument(f"spec.{exc.field}", str(exc).split(": ", 1)[-1])
    if isinstance(exc, GuestNotFound):
        return NotFound("guest", gid)
    if isinstance(exc, GuestAlreadyRunning):
        return FailedPrecondition(str(exc), state="RUNNING", reason="GUEST_RUNNING", metadata=meta)
    if isinstance(exc, AcceleratorUnavailable):
        return FailedPrecondition(str(exc), reason="ACCELERATOR_UNAVAILABLE")
    if isinstance(exc, QmpTimeout):
        err: FerryError = DeadlineExceeded(str(exc))
        err.reason = "QMP_TIMEOUT"
        err.metadata.update(meta)
        return err
    if isinstance(exc, QmpCommandFailed):
        return FailedPrecondition(str(exc), reason="QMP_COMMAND_FAILED",
                                  metadata={**meta, "command": exc.command,
                                            "error_class": exc.error_class})
    reason = {QemuStartFailed: "QEMU_START_FAILED",
              QemuStopFailed: "QEMU_STOP_FAILED"}.get(type(exc), "QEMU_FAILED")
    return Internal(str(exc), reason=reason, metadata=meta)


@contextlib.contextmanager
def driver_errors() -> Iterator[None]:
    try:
        yield
    except HostError as exc:
        mapped = to_ferry(exc)
        if mapped is exc:
            raise
        raise mapped from exc
