"""Host filters, one module per filter, and the ordered registry.

A filter module defines:

- `NAME`: the filter name reported in each `Rejection` (e.g. "memory");
- `check(host, request, context) -> list[Rejection]`: empty when the host
  passes, else one `Rejection` per failed condition, each with a
  machine-readable reason and a sentence with the figures;
- optionally `applies(request) -> bool`: whether the filter runs for that
  request at all (e.g. CPU model checks only for live migration).

Adding a filter is one module plus one line in `_MODULES`. Every active filter
runs on every host, so a rejected host lists all its reasons, not the first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType

from ..model import HostView, PlacementRequest, Rejection
from . import (
    cpu,
    cpu_model,
    exclude,
    kernel,
    memory,
    network,
    rescue,
    source_host,
    status,
    storage,
)
from .context import FilterContext

CheckFn = Callable[[HostView, PlacementRequest, FilterContext], Sequence[Rejection]]
AppliesFn = Callable[[PlacementRequest], bool]


def _always(request: PlacementRequest) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class Filter:
    name: str
    check: CheckFn
    applies: AppliesFn = _always

    @classmethod
    def from_module(cls, module: ModuleType) -> Filter:
        return cls(module.NAME, module.check, getattr(module, "applies", _always))


_MODULES = (status, exclude, source_host, cpu, memory, storage, network, cpu_model, kernel, rescue)
REGISTRY: tuple[Filter, ...] = tuple(Filter.from_module(m) for m in _MODULES)


def active_filters(request: PlacementRequest,
                   registry: Sequence[Filter] = REGISTRY) -> list[Filter]:
    return [f for f in registry if f.applies(request)]


def run_filters(host: HostView, request: PlacementRequest, context: FilterContext,
                filters: Sequence[Filter]) -> list[Rejection]:
    """Every rejection of `host` by `filters` (empty when it passes them all)."""
    out: list[Rejection] = []
    for f in filters:
        r = f.check(host, request, context)
        if r:
            out.extend(r)
    return out


__all__ = ["REGISTRY", "Filter", "FilterContext", "active_filters", "run_filters"]
