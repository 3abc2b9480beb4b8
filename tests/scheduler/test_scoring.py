"""Scoring: emptiest host first (after reservations), deterministic ties."""

from __future__ import annotations

from ferry_scheduler.clock import ManualClock
from ferry_scheduler.filters import FilterContext
from ferry_scheduler.reservations import ReservationBook
from ferry_scheduler.scoring import rank, score
from sched_helpers import host, request


def ctx(book=None):
    return FilterContext(book=book or ReservationBook(ManualClock()))


def names(ranked):
    return [h.name for _, h in ranked]


def test_more_free_memory_and_cpu_ranks_first():
    busy = host("a", "busy", mem_used_mb=6144, cpu_used=6)
    half = host("b", "half", mem_used_mb=4096, cpu_used=4)
    idle = host("c", "idle")
    ranked = rank([busy, half, idle], request(vcpu=1, memory_mb=1024), ctx())
    assert names(ranked) == ["idle", "half", "busy"]
    assert ranked[0][0] > ranked[1][0] > ranked[2][0]


def test_score_is_free_fraction_after_this_placement():
    h = host("a", cpu_count=8, mem_size_mb=8192)
    # memory: (8192-1024)/8192 = .875 (w 1), cpu: (8-2)/8 = .75 (w 1),
    # in flight: 1/(1+0) (w .5), spread: 1/(1+0) (w .5) -> 2.625 / 3 = .875
    assert score(h, request(vcpu=2, memory_mb=1024), ctx()) == 87.5


def test_reservations_lower_the_score():
    book = ReservationBook(ManualClock())
    a, b = host("a", "alpha"), host("b", "beta")
    book.reserve(host_id="a", server_id="x", vcpu=4, memory_mb=4096, storage_mb={}, ttl=60)
    assert names(rank([a, b], request(), ctx(book))) == ["beta", "alpha"]


def test_ties_break_by_name_then_id():
    hosts = [host("id-3", "zeta"), host("id-2", "alpha"), host("id-1", "alpha"), host("id-0", "mu")]
    ranked = rank(hosts, request(), ctx())
    assert [(h.name, h.id) for _, h in ranked] == [("alpha", "id-1"), ("alpha", "id-2"),
                                                  ("mu", "id-0"), ("zeta", "id-3")]
    assert len({s for s, _ in ranked}) == 1
    # the same input in any order ranks the same
    assert [h.id for _, h in rank(list(reversed(hosts)), request(), ctx())] == \
        [h.id for _, h in ranked]


def test_float_noise_does_not_break_ties():
    # 3 * 0.1 style fractions: identical hosts of different sizes with equal fractions
    a = host("a", "a", cpu_count=10, mem_size_mb=10_000, cpu_used=3, mem_used_mb=3000)
    b = host("b", "b", cpu_count=30, mem_size_mb=30_000, cpu_used=9, mem_used_mb=9000)
    req = request(vcpu=1, memory_mb=1000)
    c = request(vcpu=3, memory_mb=3000)
    assert score(a, req, ctx()) == score(b, c, ctx())
