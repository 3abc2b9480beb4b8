"""Every network the server needs must be on the host's wire (same L2)."""

from __future__ import annotations

from ..model import HostView, PlacementRequest, Rejection
from .context import FilterContext

NAME = "network"
NETWORK_NOT_ON_WIRE = "NETWORK_NOT_ON_WIRE"


def applies(request: PlacementRequest) -> bool:
    return bool(request.networks)


def check(host: HostView, request: PlacementRequest, context: FilterContext) -> list[Rejection]:
    missing = [n for n in request.networks if n not in host.networks]
    if not missing:
        return []
    carried = ", ".join(sorted(host.networks)) or "none"
    wire = host.wire or "(no wire)"
    return [Rejection(NAME, NETWORK_NOT_ON_WIRE,
                      f"network(s) {', '.join(missing)} not on wire {wire}, which carries {carried}")]
