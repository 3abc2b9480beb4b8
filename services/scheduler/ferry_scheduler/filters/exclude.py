"""Hosts the caller asked never to choose (`exclude_host_ids`)."""

from __future__ import annotations

from ..model import HostView, PlacementRequest, Rejection
from .context import FilterContext

NAME = "exclude"
EXCLUDED = "EXCLUDED"


def applies(request: PlacementRequest) -> bool:
    return bool(request.exclude_host_ids)


def check(host: HostView, request: PlacementRequest, context: FilterContext) -> list[Rejection]:
    # the source host is also excluded by the region; source_host already says why
    if host.id in request.exclude_host_ids and host.id != request.source_host_id:
        return [Rejection(NAME, EXCLUDED, "host is in the request's exclude_host_ids")]
    return []
