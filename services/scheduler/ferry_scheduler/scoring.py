"""Scoring of the hosts that passed every filter.

A score is 0..100: the weighted mean of scorers that each rate a host 0..1.
Now: the fraction of memory and of vCPU that would stay free after this
placement (after the region's usage and every held reservation), so servers
spread over the emptiest hosts. Issue 3's scorers (guests in flight to a host,
spread) are one more `Scorer` each.

Ranking is deterministic: higher score first, then host name, then host id.
Scores are rounded to 6 decimals first, so float noise cannot break a tie.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .capacity import free_memory, free_vcpu
from .filters.context import FilterContext
from .model import HostView, PlacementRequest

ScoreFn = Callable[[HostView, PlacementRequest, FilterContext], float]


@dataclass(frozen=True, slots=True)
class Scorer:
    name: str
    weight: float
    rate: ScoreFn


def _fraction(part: float, whole: float) -> float:
    if whole <= 0:
        return 0.0
    return min(max(part / whole, 0.0), 1.0)


def free_memory_after(host: HostView, request: PlacementRequest, ctx: FilterContext) -> float:
    return _fraction(free_memory(host, ctx.book) - request.memory_mb, host.mem_total_mb)


def free_cpu_after(host: HostView, request: PlacementRequest, ctx: FilterContext) -> float:
    return _fraction(free_vcpu(host, ctx.book) - request.vcpu_count, host.cpu_total)


SCORERS: tuple[Scorer, ...] = (
    Scorer("memory", 1.0, free_memory_after),
    Scorer("cpu", 1.0, free_cpu_after),
)


def score(host: HostView, request: PlacementRequest, ctx: FilterContext,
          scorers: Sequence[Scorer] = SCORERS) -> float:
    total = sum(s.weight for s in scorers)
    if total <= 0:
        return 0.0
    value = sum(s.weight * s.rate(host, request, ctx) for s in scorers)
    return round(100.0 * value / total, 6)


def rank(hosts: Iterable[HostView], request: PlacementRequest, ctx: FilterContext,
         scorers: Sequence[Scorer] = SCORERS) -> list[tuple[float, HostView]]:
    """Hosts with their scores, best first; ties by name, then id."""
    scored = [(score(h, request, ctx, scorers), h) for h in hosts]
    scored.sort(key=lambda sh: (-sh[0], sh[1].name, sh[1].id))
    return scored
