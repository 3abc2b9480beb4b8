"""The scheduler's domain errors; each maps to one canonical gRPC code.

`SchedulerError` is the package root. Every concrete error also derives from
the `ferry_common.errors` class that fixes its gRPC code, so the shared
`ErrorMappingInterceptor` turns it into a `google.rpc.Status` with details.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ferry_common.errors import (
    FailedPrecondition,
    FerryError,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)

if TYPE_CHECKING:
    from .model import PlacementResult


class SchedulerError(FerryError):
    """Root of every scheduler error."""


class InvalidRequest(SchedulerError, InvalidArgument):
    """A request field is malformed; `field` names it (ErrorInfo metadata "field")."""


class UnknownHost(SchedulerError, NotFound):
    """`prefer_host` (or a source host) names no host the scheduler knows."""

    def __init__(self, ident: str) -> None:
        super().__init__("host", ident)


class UnknownReservation(SchedulerError, NotFound):
    """No reservation has that id (nor had one recently)."""

    def __init__(self, ident: str) -> None:
        super().__init__("reservation", ident)


class ReservationEnded(SchedulerError, FailedPrecondition):
    """Confirming a reservation that expired or was released; `state` names which."""


class HostViewNotReady(SchedulerError, Unavailable):
    """The first snapshot from the region has not arrived yet."""

    reason = "HOST_VIEW_NOT_READY"


class NoHostFits(SchedulerError, ResourceExhausted):
    """No candidate passed the filters; `result` holds every rejected host and why.

    The servicer appends the result as a `SelectHostResponse` to `details`, so
    the status carries the per-host reasons for any client to unpack.
    """

    def __init__(self, message: str, result: PlacementResult, *, reason: str | None = None,
                 metadata: dict[str, str] | None = None) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.result = result
