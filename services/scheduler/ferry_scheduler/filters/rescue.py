"""Rescue (the source host is down): every disk must be on shared storage.

The disks cannot be copied off a dead host, so a rescue only moves metadata;
a local disk makes every host unsuitable, and each says which disk.
"""

from __future__ import annotations

from ..model import HostView, PlacementKind, PlacementRequest, Rejection
from .context import FilterContext

NAME = "rescue"
DISK_NOT_SHARED = "DISK_NOT_SHARED"


def applies(request: PlacementRequest) -> bool:
    return request.kind is PlacementKind.RESCUE


def check(host: HostView, request: PlacementRequest, context: FilterContext) -> list[Rejection]:
    local = [str(i) for i, d in enumerate(request.disks) if not d.shared]
    if not local:
        return []
    return [Rejection(NAME, DISK_NOT_SHARED,
                      f"rescue needs every disk on shared storage; disk(s) {', '.join(local)} "
                      f"are local to the down host")]
