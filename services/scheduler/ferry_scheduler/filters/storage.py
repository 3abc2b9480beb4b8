"""Storage: a place for every disk on this host.

- A disk with `storage_id` must use that storage, mounted on this host (and of
  kind SHARED when the disk is shared).
- Other shared disks need some SHARED storage mounted on this host.
- Other (local) disks take a LOCAL storage if one has room, else a SHARED one;
  among those, the one with the most free space left.
- Free space is needed for every disk, except a shared disk of a migration,
  which stays where it is and only has to be reachable.

The chosen storage per disk (request order) is memoised in the context and
becomes the candidate's `storage_ids`; the MiB per storage id become the
reservation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ..capacity import free_storage
from ..model import MIGRATION_KINDS, HostView, PlacementRequest, Rejection, StorageView
from .context import FilterContext

NAME = "storage"
INSUFFICIENT_STORAGE = "INSUFFICIENT_STORAGE"
STORAGE_NOT_REACHABLE = "STORAGE_NOT_REACHABLE"
STORAGE_NOT_SHARED = "STORAGE_NOT_SHARED"


@dataclass(slots=True)
class StoragePlan:
    storage_ids: list[str] = field(default_factory=list)
    storage_mb: dict[str, int] = field(default_factory=dict)
    rejections: list[Rejection] = field(default_factory=list)


def applies(request: PlacementRequest) -> bool:
    return bool(request.disks)


def check(host: HostView, request: PlacementRequest, context: FilterContext) -> list[Rejection]:
    return plan(host, request, context).rejections


def plan(host: HostView, request: PlacementRequest, context: FilterContext) -> StoragePlan:
    cached = context.storage_plans.get(host.id)
    if cached is not None:
        return cached
    result = StoragePlan()
    left: dict[str, int] = {}          # free MiB per storage after the disks placed so far

    def free(s: StorageView) -> int:
        if s.id not in left:
            left[s.id] = free_storage(s, context.book)
        return left[s.id]

    for i, disk in enumerate(request.disks):
        options = _options(host, i, disk.shared, disk.storage_id, result.rejections)
        if not options:
            result.storage_ids.append("")
            continue
        if disk.shared and request.kind in MIGRATION_KINDS:
            result.storage_ids.append(options[0].id)      # stays in place
            continue
        if disk.storage_id or disk.shared:
            ranked = sorted(options, key=lambda s: (-free(s), s.id))
        else:   # local first, then shared; most room first
            ranked = sorted(options, key=lambda s: (s.shared, -free(s), s.id))
        chosen = next((s for s in ranked if free(s) >= disk.size_mb), None)
        if chosen is None:
            result.rejections.append(_no_room(i, disk.size_mb, ranked, free, context))
            result.storage_ids.append("")
            continue
        left[chosen.id] -= disk.size_mb
        result.storage_ids.append(chosen.id)
        if disk.size_mb:
            result.storage_mb[chosen.id] = result.storage_mb.get(chosen.id, 0) + disk.size_mb
    context.storage_plans[host.id] = result
    return result


def _no_room(index: int, size_mb: int, ranked: list[StorageView],
             free: Callable[[StorageView], int], context: FilterContext) -> Rejection:
    best = max(ranked, key=lambda s: (free(s), s.id))
    held = context.book.held_storage(best.id)
    by_earlier = free_storage(best, context.book) - free(best)
    extra = f", {by_earlier} MiB taken by earlier disks" if by_earlier else ""
    return Rejection(NAME, INSUFFICIENT_STORAGE,
                     f"disk {index} needs {size_mb} MiB, most free is {max(free(best), 0)} MiB "
                     f"on {best.id} ({best.free_mb} MiB free of {best.capacity_mb} MiB, "
                     f"reserved {held}{extra})")


def _options(host: HostView, index: int, shared: bool, storage_id: str,
             rejections: list[Rejection]) -> list[StorageView]:
    def mounted() -> str:
        return ", ".join(s.id for s in host.storages) or "none"

    if storage_id:
        s = host.storage(storage_id)
        if s is None:
            rejections.append(Rejection(NAME, STORAGE_NOT_REACHABLE,
                                        f"disk {index} needs storage {storage_id}, not mounted on "
                                        f"this host (mounts {mounted()})"))
            return []
        if shared and not s.shared:
            rejections.append(Rejection(NAME, STORAGE_NOT_SHARED,
                                        f"disk {index} needs shared storage, but {storage_id} is "
                                        f"local here"))
            return []
        return [s]
    if shared:
        options = [s for s in host.storages if s.shared]
        if not options:
            rejections.append(Rejection(NAME, STORAGE_NOT_REACHABLE,
                                        f"disk {index} needs a shared storage, host mounts none "
                                        f"(mounts {mounted()})"))
        return options
    if not host.storages:
        rejections.append(Rejection(NAME, INSUFFICIENT_STORAGE,
                                    f"disk {index} needs a storage, host has none"))
    return list(host.storages)
