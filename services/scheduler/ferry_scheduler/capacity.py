"""Free capacity of a host after the region's usage and the scheduler's reservations.

Shared by the capacity filters and by scoring so both count the same way:
vCPU: cpu_count * cpu_cmtbound - cpu_used - held;
memory: mem_size * mem_cmtbound - mem_reserved - mem_used - held;
storage: free_mb as reported - held on that storage id (all hosts that mount it).
"""

from __future__ import annotations

from .model import HostView, StorageView
from .reservations import ReservationBook


def free_vcpu(host: HostView, book: ReservationBook) -> int:
    return host.cpu_total - host.cpu_used - book.held_vcpu(host.id)


def free_memory(host: HostView, book: ReservationBook) -> int:
    return host.mem_total_mb - host.mem_used_mb - book.held_memory(host.id)


def free_storage(storage: StorageView, book: ReservationBook) -> int:
    return storage.free_mb - book.held_storage(storage.id)
