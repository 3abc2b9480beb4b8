"""Scoring of the hosts that passed every filter.

A score is 0..100: the weighted mean of scorers that each rate a host 0..1:

- memory, cpu: the fraction of memory and of vCPU that would stay free after
  this placement (after the region's usage and every held reservation), so
  servers go to the emptiest hosts;
- in_flight: 1 / (1 + guests on their way to the host), the live reservations
  there, so a burst (a dead host's guests) does not pile onto one target while
  the region's usage lags;
- spread: 1 / (1 + servers the region counts on the host).

`fastindex.py` computes the same formula over arrays in the same order of
operations, so both give bit-identical scores.

Ranking is deterministic: higher score first, then host name, then host id.
Scores are rounded to 6 decimals (`round6`) first, so float noise cannot break a tie.
"""

from __future__ import annotations

import math
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


def fewer_in_flight(host: HostView, request: PlacementRequest, ctx: FilterContext) -> float:
    return 1.0 / (1.0 + ctx.book.in_flight(host.id))


def spread(host: HostView, request: PlacementRequest, ctx: FilterContext) -> float:
    return 1.0 / (1.0 + max(host.server_count, 0))


SCORERS: tuple[Scorer, ...] = (
    Scorer("memory", 1.0, free_memory_after),
    Scorer("cpu", 1.0, free_cpu_after),
    Scorer("in_flight", 0.5, fewer_in_flight),
    Scorer("spread", 0.5, spread),
)


def score(host: HostView, request: PlacementRequest, ctx: FilterContext,
          scorers: Sequence[Scorer] = SCORERS) -> float:
    total = sum(s.weight for s in scorers)
    if total <= 0:
        return 0.0
    value = 0.0
    for s in scorers:
        value = value + s.weight * s.rate(host, request, ctx)
    return round6(100.0 * value / total)


def round6(x: float) -> float:
    """Rounded to 6 decimals by operations numpy repeats exactly (fastindex.py)."""
    return math.floor(x * 1e6 + 0.5) / 1e6


def rank(hosts: Iterable[HostView], request: PlacementRequest, ctx: FilterContext,
         scorers: Sequence[Scorer] = SCORERS) -> list[tuple[float, HostView]]:
    """Hosts with their scores, best first; ties by name, then id."""
    scored = [(score(h, request, ctx, scorers), h) for h in hosts]
    scored.sort(key=lambda sh: (-sh[0], sh[1].name, sh[1].id))
    return scored
