"""Region-specific domain errors.

Everything the region raises derives from `RegionError` (itself a `FerryError`)
or is one of the shared `ferry_common.errors` classes; the shared interceptor
maps both to canonical gRPC codes.
"""

from __future__ import annotations

import grpc

from ferry_common.errors import FerryError


class RegionError(FerryError):
    """Root of the region's own errors."""

    code = grpc.StatusCode.INTERNAL
    reason = "REGION_ERROR"


class TaskInterrupted(RegionError):
    """A task stage could not be resumed after a region restart."""

    code = grpc.StatusCode.ABORTED
    reason = "TASK_INTERRUPTED"


class StageTimeout(RegionError):
    """A task stage did not finish within its deadline."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "STAGE_TIMEOUT"


class InvalidImage(RegionError):
    """An uploaded file is not a valid image of its declared format."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_IMAGE"

    def __init__(self, message: str, *, field: str = "chunk") -> None:
        super().__init__(f"{field}: {message}", metadata={"field": field})
        self.field = field
