"""Free memory: mem_size * mem_cmtbound - mem_reserved - mem_used - held by reservations."""

from __future__ import annotations

from ..capacity import free_memory
from ..model import HostView, PlacementRequest, Rejection, effective_bound
from .context import FilterContext

NAME = "memory"
INSUFFICIENT_MEMORY = "INSUFFICIENT_MEMORY"


def check(host: HostView, request: PlacementRequest, context: FilterContext) -> list[Rejection]:
    free = free_memory(host, context.book)
    if request.memory_mb <= free:
        return []
    held = context.book.held_memory(host.id)
    return [Rejection(NAME, INSUFFICIENT_MEMORY,
                      f"needs {request.memory_mb} MiB, {max(free, 0)} MiB free of "
                      f"{host.mem_size_mb} MiB (cmtbound {effective_bound(host.mem_cmtbound):g}, "
                      f"host reserved {host.mem_reserved_mb}, used {host.mem_used_mb}, "
                      f"reserved {held})")]
