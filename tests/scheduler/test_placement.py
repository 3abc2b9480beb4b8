"""The placement engine in-process: choice, reasons, prefer_host, reservations."""

from __future__ import annotations

import pytest
from ferry_proto.region.v1 import resources_pb2
from ferry_scheduler.cache import HostCache
from ferry_scheduler.errors import HostViewNotReady, NoHostFits, UnknownHost
from ferry_scheduler.model import DiskRequest
from ferry_scheduler.placement import Placer
from ferry_scheduler.reservations import ReservationBook
from sched_helpers import World, host, request


def test_selects_emptiest_host_and_reserves_it():
    w = World(host("h1", "alpha", mem_used_mb=4096), host("h2", "beta"),
              host("h3", "gamma", enabled=False))
    res = w.placer.select(request(vcpu=2, memory_mb=2048, disks=(DiskRequest(1000),)))
    assert res.selected.host_id == "h2"
    assert [c.host_id for c in res.candidates] == ["h2", "h1"]
    assert res.selected.storage_ids == ("h2-local",)
    assert [(r.host_id, [x.reason for x in r.rejections]) for r in res.rejected] == \
        [("h3", ["HOST_DISABLED"])]
    assert res.reservation.host_id == "h2"
    assert res.reservation.expires_at == pytest.approx(w.clock.wall() + 60)
    assert (w.book.held_vcpu("h2"), w.book.held_memory("h2"),
            w.book.held_storage("h2-local")) == (2, 2048, 1000)


def test_no_host_fits_carries_every_rejected_host():
    w = World(host("h1", "alpha", mem_size_mb=1024), host("h2", "beta", cpu_count=1),
              host("h3", "gamma", host_status=resources_pb2.HOST_HEALTH_OFFLINE,
                   mem_size_mb=1024))
    with pytest.raises(NoHostFits) as e:
        w.placer.select(request(vcpu=2, memory_mb=2048, server_id="vm1"))
    err = e.value
    assert err.reason == "NO_HOST_FITS"
    assert {r.host_id: [x.reason for x in r.rejections] for r in err.result.rejected} == {
        "h1": ["INSUFFICIENT_MEMORY"],
        "h2": ["INSUFFICIENT_CPU"],
        "h3": ["HOST_OFFLINE", "INSUFFICIENT_MEMORY"],
    }
    assert "server vm1" in err.message and "INSUFFICIENT_MEMORY on 2" in err.message
    assert err.metadata["reasons"] == "HOST_OFFLINE=1,INSUFFICIENT_CPU=1,INSUFFICIENT_MEMORY=2"
    assert err.metadata["hosts_rejected"] == "3"
    assert len(w.book) == 0


def test_no_hosts_at_all():
    w = World()
    with pytest.raises(NoHostFits) as e:
        w.placer.select(request())
    assert e.value.reason == "NO_HOSTS"


def test_prefer_host_by_id_or_name_narrows_the_candidates():
    w = World(host("h1", "alpha"), host("h2", "beta", mem_used_mb=4096))
    res = w.placer.select(request(prefer_host="beta", server_id="a"))
    assert res.selected.host_id == "h2" and [c.host_id for c in res.candidates] == ["h2"]
    assert res.rejected == ()
    res = w.placer.select(request(prefer_host="h2", server_id="b"))
    assert res.selected.host_id == "h2"


def test_prefer_host_failing_is_not_a_silent_fallback():
    w = World(host("h1", "alpha"), host("h2", "beta", mem_size_mb=1024, enabled=False))
    with pytest.raises(NoHostFits) as e:
        w.placer.select(request(memory_mb=2048, prefer_host="beta"))
    err = e.value
    assert err.reason == "PREFERRED_HOST_REJECTED"
    assert err.metadata["prefer_host"] == "h2"
    assert "beta (h2)" in err.message and "HOST_DISABLED" in err.message
    assert "INSUFFICIENT_MEMORY: needs 2048 MiB" in err.message
    assert [r.host_id for r in err.result.rejected] == ["h2"]
    assert len(w.book) == 0


def test_prefer_host_unknown_is_not_found():
    w = World(host("h1"))
    with pytest.raises(UnknownHost) as e:
        w.placer.select(request(prefer_host="nope"))
    assert e.value.code.name == "NOT_FOUND" and e.value.metadata["id"] == "nope"


def test_excluded_hosts_are_rejected_with_a_reason():
    w = World(host("h1"), host("h2"))
    res = w.placer.select(request(exclude=frozenset({"h1"})))
    assert res.selected.host_id == "h2"
    assert [x.reason for x in res.rejected[0].rejections] == ["EXCLUDED"]


def test_live_migration_filters_use_the_source_host():
    w = World(host("src", cpu_model="A"), host("h1", cpu_model="B"), host("h2", cpu_model="A"))
    from ferry_scheduler.model import PlacementKind
    res = w.placer.select(request(kind=PlacementKind.LIVE_MIGRATE, source_host_id="src"))
    assert res.selected.host_id == "h2"
    assert {r.host_id: r.rejections[0].reason for r in res.rejected} == \
        {"src": "SOURCE_HOST", "h1": "CPU_MODEL_MISMATCH"}
    with pytest.raises(UnknownHost):
        w.placer.select(request(kind=PlacementKind.LIVE_MIGRATE, source_host_id="gone"))


def test_hosts_that_fit_ten_place_exactly_ten():
    # two hosts of 5 slots each (2 vCPU / 1 GiB per server)
    w = World(host("h1", cpu_count=10, mem_size_mb=5 * 1024),
              host("h2", cpu_count=12, mem_size_mb=5 * 1024 + 500))
    placed, failed = [], 0
    for i in range(50):
        try:
            placed.append(w.placer.select(request(vcpu=2, memory_mb=1024, server_id=f"s{i}")))
        except NoHostFits:
            failed += 1
    assert len(placed) == 10 and failed == 40
    per_host = {h: sum(1 for p in placed if p.selected.host_id == h) for h in ("h1", "h2")}
    assert per_host == {"h1": 5, "h2": 5}


def test_expiry_frees_the_host_for_the_next_placement():
    w = World(host("h1", cpu_count=2, mem_size_mb=2048))
    w.placer.select(request(vcpu=2, memory_mb=2048, server_id="a", ttl=5))
    with pytest.raises(NoHostFits):
        w.placer.select(request(vcpu=2, memory_mb=2048, server_id="b"))
    w.clock.advance(5.01)
    assert w.placer.select(request(vcpu=2, memory_mb=2048, server_id="b")).selected.host_id == "h1"


def test_release_and_confirm_through_the_placer():
    w = World(host("h1", cpu_count=2, mem_size_mb=2048))
    r = w.placer.select(request(vcpu=2, memory_mb=2048, server_id="a")).reservation
    w.placer.release(r.id)
    r = w.placer.select(request(vcpu=2, memory_mb=2048, server_id="b")).reservation
    w.placer.confirm(r.id)
    w.clock.advance(61)        # past the TTL: a confirmed reservation stays
    with pytest.raises(NoHostFits):
        w.placer.select(request(vcpu=2, memory_mb=2048, server_id="c"))
    # the region's usage now includes server b: the confirmed reservation settles
    w.cache.apply_changes([host("h1", cpu_count=2, mem_size_mb=2048, cpu_used=2,
                                mem_used_mb=2048)], [])
    assert len(w.book) == 0
    with pytest.raises(NoHostFits) as e:   # still full, now by the region's own books
        w.placer.select(request(vcpu=2, memory_mb=2048, server_id="c"))
    memory_reason = e.value.result.rejected[0].rejections[1]
    assert memory_reason.reason == "INSUFFICIENT_MEMORY" and "used 2048" in memory_reason.message
    assert "h1: INSUFFICIENT_CPU: needs 2 vCPU" in e.value.message   # few hosts: spelled out


def test_region_flow_commit_then_confirm_counts_the_server_once():
    w = World(host("h1", cpu_count=4, mem_size_mb=4096))
    r = w.placer.select(request(vcpu=2, memory_mb=2048, server_id="a")).reservation
    # the region commits the server's host (its usage grows), then confirms
    w.cache.apply_changes([host("h1", cpu_count=4, mem_size_mb=4096, cpu_used=2,
                                mem_used_mb=2048, server_count=1)], [])
    w.placer.confirm(r.id)
    assert len(w.book) == 0
    # the other half of the host is still free: not counted twice
    assert w.placer.select(request(vcpu=2, memory_mb=2048, server_id="b")).selected.host_id == "h1"


def test_placing_the_same_server_again_replaces_its_pending_reservation():
    w = World(host("h1", cpu_count=2, mem_size_mb=2048))
    first = w.placer.select(request(vcpu=2, memory_mb=2048, server_id="a")).reservation
    second = w.placer.select(request(vcpu=2, memory_mb=2048, server_id="a")).reservation
    assert first.id != second.id and w.book.get(first.id) is None and len(w.book) == 1


def test_no_snapshot_yet_is_unavailable():
    cache = HostCache()
    placer = Placer(cache, ReservationBook())
    with pytest.raises(HostViewNotReady) as e:
        placer.select(request())
    assert e.value.code.name == "UNAVAILABLE"


def test_stale_view_still_places_and_says_so():
    w = World(host("h1", mem_size_mb=1024))
    w.cache.mark_stale("region unreachable")
    res = w.placer.select(request(memory_mb=512, server_id="a"))
    assert res.stale_view and res.selected.host_id == "h1"
    with pytest.raises(NoHostFits) as e:
        w.placer.select(request(memory_mb=4096, server_id="b"))
    assert e.value.metadata["host_view"] == "stale"
    assert "region unreachable" in e.value.message
