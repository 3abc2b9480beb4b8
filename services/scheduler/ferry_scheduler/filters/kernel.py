"""Live migration: same kernel version as the source, unless skip_kernel_check."""

from __future__ import annotations

from ..model import HostView, PlacementKind, PlacementRequest, Rejection
from .context import FilterContext

NAME = "kernel"
KERNEL_MISMATCH = "KERNEL_MISMATCH"


def applies(request: PlacementRequest) -> bool:
    return (request.kind is PlacementKind.LIVE_MIGRATE and bool(request.source_host_id)
            and not request.skip_kernel_check)


def check(host: HostView, request: PlacementRequest, context: FilterContext) -> list[Rejection]:
    src = context.source
    if src is None or host.kernel_version == src.kernel_version:
        return []
    return [Rejection(NAME, KERNEL_MISMATCH,
                      f"kernel {host.kernel_version!r} differs from the source's "
                      f"{src.kernel_version!r} (skip_kernel_check to allow)")]
