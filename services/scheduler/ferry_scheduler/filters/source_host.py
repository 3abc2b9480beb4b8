"""A migration never targets the server's current host."""

from __future__ import annotations

from ..model import HostView, PlacementRequest, Rejection
from .context import FilterContext

NAME = "source_host"
SOURCE_HOST = "SOURCE_HOST"


def applies(request: PlacementRequest) -> bool:
    return bool(request.source_host_id)


def check(host: HostView, request: PlacementRequest, context: FilterContext) -> list[Rejection]:
    if host.id == request.source_host_id:
        return [Rejection(NAME, SOURCE_HOST, "host is the server's current host")]
    return []
