"""Reservations: holding, TTL expiry, confirm/release semantics, settling."""

from __future__ import annotations

import pytest
from ferry_scheduler.clock import ManualClock
from ferry_scheduler.errors import ReservationEnded, UnknownReservation
from ferry_scheduler.reservations import ReservationBook, ReservationState
from sched_helpers import host


def book(grace: float = 120.0) -> tuple[ReservationBook, ManualClock]:
    clock = ManualClock()
    return ReservationBook(clock, confirmed_grace=grace), clock


def take(b: ReservationBook, host_id: str = "h1", vcpu: int = 2, mem: int = 1024,
         storage=None, ttl: float = 60, server: str = "s"):
    return b.reserve(host_id=host_id, server_id=server, vcpu=vcpu, memory_mb=mem,
                     storage_mb=storage or {}, ttl=ttl)


def test_reserve_holds_per_host_and_per_storage():
    b, _ = book()
    take(b, "h1", 2, 1024, {"h1-local": 100, "shared0": 50}, server="a")
    take(b, "h2", 1, 512, {"shared0": 25}, server="b")
    assert (b.held_vcpu("h1"), b.held_memory("h1")) == (2, 1024)
    assert (b.held_vcpu("h2"), b.held_memory("h2")) == (1, 512)
    assert b.held_storage("shared0") == 75 and b.held_storage("h1-local") == 100


def test_unconfirmed_reservation_expires_and_frees():
    b, clock = book()
    r = take(b, ttl=10, storage={"s0": 5})
    clock.advance(9.9)
    b.purge()
    assert b.held_vcpu("h1") == 2
    clock.advance(0.2)
    b.purge()
    assert (b.held_vcpu("h1"), b.held_memory("h1"), b.held_storage("s0")) == (0, 0, 0)
    assert b.get(r.id) is None
    with pytest.raises(ReservationEnded) as e:
        b.confirm(r.id)
    assert e.value.state == "EXPIRED"
    b.release(r.id)            # releasing an expired one is fine


def test_release_frees_and_twice_is_fine():
    b, _ = book()
    r = take(b)
    b.release(r.id)
    b.release(r.id)
    assert b.held_vcpu("h1") == 0 and len(b) == 0
    with pytest.raises(ReservationEnded):
        b.confirm(r.id)


def test_unknown_ids_are_not_found():
    b, _ = book()
    with pytest.raises(UnknownReservation):
        b.confirm("rsv-nope")
    with pytest.raises(UnknownReservation):
        b.release("rsv-nope")


def test_confirmed_outlives_ttl_then_settles_after_grace():
    b, clock = book(grace=30)
    r = take(b, ttl=5)
    b.confirm(r.id)
    b.confirm(r.id)            # idempotent
    clock.advance(20)
    b.purge()
    assert b.get(r.id).state is ReservationState.CONFIRMED and b.held_vcpu("h1") == 2
    clock.advance(11)
    b.purge()
    assert b.get(r.id) is None and b.held_vcpu("h1") == 0
    b.confirm(r.id)            # a settled reservation was confirmed: still fine


def test_confirmed_settles_when_region_usage_grows_by_it():
    b, _ = book()
    r1 = take(b, vcpu=2, mem=1024, server="a")
    r2 = take(b, vcpu=4, mem=4096, server="b")
    b.confirm(r1.id)
    b.confirm(r2.id)
    before = host("h1", cpu_used=0, mem_used_mb=0)
    # unrelated change (health) : nothing settles
    b.on_host_update(before, host("h1", cpu_used=0, mem_used_mb=0, enabled=False))
    assert len(b) == 2
    # the region now counts r1 only
    b.on_host_update(before, host("h1", cpu_used=2, mem_used_mb=1024))
    assert b.get(r1.id) is None and b.get(r2.id) is not None
    assert (b.held_vcpu("h1"), b.held_memory("h1")) == (4, 4096)


def test_region_commit_before_confirm_settles_the_pending_reservation():
    b, _ = book()
    r = take(b, vcpu=2, mem=1024)
    b.on_host_update(host("h1"), host("h1", cpu_used=2, mem_used_mb=1024))
    assert b.get(r.id) is None and b.held_vcpu("h1") == 0
    b.confirm(r.id)            # the region confirms afterwards: fine
    b.release(r.id)            # and may still give it back (its own usage drops then)


def test_growth_prefers_the_exact_match_over_the_oldest():
    b, _ = book()
    small = take(b, vcpu=1, mem=512, server="a")
    big = take(b, vcpu=4, mem=4096, server="b")
    b.on_host_update(host("h1"), host("h1", cpu_used=4, mem_used_mb=4096))
    assert b.get(big.id) is None and b.get(small.id) is not None


def test_growth_never_unaccounts_more_than_the_region_added():
    b, _ = book()
    rs = [take(b, vcpu=2, mem=2048, server=f"s{i}") for i in range(3)]
    # the region added 5 vCPU / 5000 MiB: two of the three fit inside, oldest first
    b.on_host_update(host("h1"), host("h1", cpu_used=5, mem_used_mb=5000))
    assert [b.get(r.id) is None for r in rs] == [True, True, False]
    # a shrink (a delete) settles nothing
    b.on_host_update(host("h1", cpu_used=5), host("h1", cpu_used=3, mem_used_mb=9000))
    assert b.get(rs[2].id) is not None


def test_release_of_confirmed_and_host_removal():
    b, _ = book()
    r1 = take(b, server="a")
    r2 = take(b, server="b")
    b.confirm(r1.id)
    b.release(r1.id)
    assert b.held_vcpu("h1") == 2
    b.on_host_removed("h1")
    assert b.get(r2.id) is None and b.held_vcpu("h1") == 0


def test_pending_for_server():
    b, _ = book()
    r = take(b, server="srv")
    assert b.pending_for_server("srv") is r
    b.confirm(r.id)
    assert b.pending_for_server("srv") is None
    assert b.pending_for_server("") is None
