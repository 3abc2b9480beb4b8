"""Free vCPUs: cpu_count * cpu_cmtbound - cpu_used - held by reservations."""

from __future__ import annotations

from ..capacity import free_vcpu
from ..model import HostView, PlacementRequest, Rejection, effective_bound
from .context import FilterContext

NAME = "cpu"
INSUFFICIENT_CPU = "INSUFFICIENT_CPU"


def check(host: HostView, request: PlacementRequest, context: FilterContext) -> list[Rejection]:
    free = free_vcpu(host, context.book)
    if request.vcpu_count <= free:
        return []
    held = context.book.held_vcpu(host.id)
    return [Rejection(NAME, INSUFFICIENT_CPU,
                      f"needs {request.vcpu_count} vCPU, {max(free, 0)} free of {host.cpu_total} "
                      f"({host.cpu_count} pCPU x cmtbound {effective_bound(host.cpu_cmtbound):g}, "
                      f"used {host.cpu_used}, reserved {held})")]
