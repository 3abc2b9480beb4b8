"""The host must be enabled, running (status) and online (host_status)."""

from __future__ import annotations

from ..model import HostView, PlacementRequest, Rejection
from .context import FilterContext

NAME = "status"
HOST_DISABLED = "HOST_DISABLED"
HOST_NOT_RUNNING = "HOST_NOT_RUNNING"
HOST_OFFLINE = "HOST_OFFLINE"


def check(host: HostView, request: PlacementRequest, context: FilterContext) -> list[Rejection]:
    out: list[Rejection] = []
    if not host.enabled:
        out.append(Rejection(NAME, HOST_DISABLED, "host is disabled for scheduling"))
    if not host.running:
        out.append(Rejection(NAME, HOST_NOT_RUNNING,
                             f"host status is {host.status_name}, needs running"))
    if not host.online:
        out.append(Rejection(NAME, HOST_OFFLINE,
                             f"host_status is {host.health_name}, needs online (etcd health key)"))
    return out
