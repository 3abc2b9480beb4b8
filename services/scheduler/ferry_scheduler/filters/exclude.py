"""Hosts the caller asked never to choose (`exclude_host_ids`)."""

from __future__ import annotations

from ..model import HostView, PlacementRequest, Rejection
from .context import FilterContext

NAME = "exclude"
EXCLUDED = "EXCLUDED"


def applies(request: PlacementRequest) -> bool:
    return bool(request.exclude_host_ids)


def check(host: HostView, request: PlacementRequest, context: FilterContext) -> list[Rejection]:
    if host.id in request.exclude_host_ids:
        return [Rejection(NAME, EXCLUDED, "host is in the request's exclude_host_ids")]
    return []
