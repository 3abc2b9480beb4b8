"""Placement for migration: each migration filter with its reasons, prefer-host, skip flags,
conflicting flags, unknown hosts, forecast without reservation, the in-flight and spread scores."""

from __future__ import annotations

import pytest
from ferry_proto.scheduler.v1 import scheduler_pb2
from ferry_scheduler.convert import forecast_from_proto, request_from_proto
from ferry_scheduler.errors import InvalidRequest, NoHostFits, UnknownHost
from ferry_scheduler.model import DiskRequest, PlacementKind
from sched_helpers import World, host, request

LIVE, MIGRATE, RESCUE = PlacementKind.LIVE_MIGRATE, PlacementKind.MIGRATE, PlacementKind.RESCUE


def reasons(result, name):
    rh = next(r for r in result.rejected if r.host_name == name)
    return [(x.filter, x.reason) for x in rh.rejections]


def world():
    return World(
        host("src", "src", shared={"shared0": 10_000}),
        host("same", "same", shared={"shared0": 10_000}),
        host("oldcpu", "oldcpu", cpu_model="AMD EPYC", shared={"shared0": 10_000}),
        host("micro", "micro", cpu_microcode="0x2", shared={"shared0": 10_000}),
        host("kern", "kern", kernel_version="6.5.0", shared={"shared0": 10_000}),
        host("noshare", "noshare"),
        host("full", "full", local_free_mb=100, shared={"shared0": 0}),
        host("otherl2", "otherl2", wire="wire1", networks=("net9",), shared={"shared0": 10_000}),
        host("down", "down", host_status=0, shared={"shared0": 10_000}),
        host("off", "off", enabled=False, shared={"shared0": 10_000}),
    )


SHARED = DiskRequest(50_000, shared=True, storage_id="shared0")
LOCAL = DiskRequest(1_000)


def test_live_forecast_names_every_filter_and_takes_no_reservation():
    w = world()
    r = request(2, 1024, kind=LIVE, source_host_id="src", exclude=frozenset({"src"}),
                disks=(LOCAL, SHARED), networks=("net0",))
    result = w.placer.forecast(r)
    assert [c.host_name for c in result.candidates] == ["same"]
    assert result.selected is None and result.reservation is None and len(w.book) == 0
    assert reasons(result, "src") == [("source_host", "SOURCE_HOST")]     # not also EXCLUDED
    assert reasons(result, "oldcpu") == [("cpu_model", "CPU_MODEL_MISMATCH")]
    assert reasons(result, "micro") == [("cpu_model", "CPU_MICROCODE_MISMATCH")]
    assert reasons(result, "kern") == [("kernel", "KERNEL_MISMATCH")]
    assert reasons(result, "noshare") == [("storage", "STORAGE_NOT_REACHABLE")]
    assert reasons(result, "full") == [("storage", "INSUFFICIENT_STORAGE")]
    assert reasons(result, "otherl2") == [("network", "NETWORK_NOT_ON_WIRE")]
    assert reasons(result, "down") == [("status", "HOST_OFFLINE")]
    assert reasons(result, "off") == [("status", "HOST_DISABLED")]
    msg = {x.reason: x.message for rh in result.rejected for x in rh.rejections}
    assert "'AMD EPYC' differs from the source's 'Intel Xeon'" in msg["CPU_MODEL_MISMATCH"]
    assert "skip_cpu_check" in msg["CPU_MODEL_MISMATCH"]
    assert "'6.5.0' differs from the source's '6.1.0'" in msg["KERNEL_MISMATCH"]
    assert "disk 1 needs storage shared0, not mounted on this host" in msg["STORAGE_NOT_REACHABLE"]
    assert "disk 0 needs 1000 MiB, most free is 100 MiB" in msg["INSUFFICIENT_STORAGE"]
    assert "network(s) net0 not on wire wire1" in msg["NETWORK_NOT_ON_WIRE"]


def test_skip_flags_let_cpu_and_kernel_differences_through():
    w = world()
    base = {"kind": LIVE, "source_host_id": "src", "disks": (SHARED,), "networks": ("net0",)}
    names = lambda res: sorted(c.host_name for c in res.candidates)
    # "full" has no room for a local disk, and this server has none
    assert names(w.placer.forecast(request(**base))) == ["full", "same"]
    assert names(w.placer.forecast(request(**base, skip_cpu_check=True))) == \
        ["full", "micro", "oldcpu", "same"]
    assert names(w.placer.forecast(request(**base, skip_kernel_check=True))) == \
        ["full", "kern", "same"]
    assert names(w.placer.forecast(request(**base, skip_cpu_check=True, skip_kernel_check=True))) \
        == ["full", "kern", "micro", "oldcpu", "same"]


def test_cold_migration_ignores_cpu_and_kernel_and_shared_disks_need_no_room():
    w = world()
    result = w.placer.forecast(request(kind=MIGRATE, source_host_id="src", disks=(SHARED,)))
    # "full" has 0 MiB free on shared0: the shared disk stays where it is
    assert sorted(c.host_name for c in result.candidates) == \
        ["full", "kern", "micro", "oldcpu", "otherl2", "same"]
    created = w.placer.forecast(request(disks=(DiskRequest(50_000, shared=True),)))
    assert reasons(created, "full") == [("storage", "INSUFFICIENT_STORAGE")]


def test_rescue_needs_every_disk_shared_and_says_which():
    w = world()
    result = w.placer.forecast(request(kind=RESCUE, source_host_id="down", disks=(SHARED, LOCAL)))
    assert not result.candidates
    assert ("rescue", "DISK_NOT_SHARED") in reasons(result, "same")
    msg = next(x.message for x in result.rejected[0].rejections if x.reason == "DISK_NOT_SHARED")
    assert "disk(s) 1 are local" in msg
    ok = w.placer.select(request(kind=RESCUE, source_host_id="down", disks=(SHARED,)))
    assert ok.selected.host_name not in ("down", "noshare", "off")
    assert ok.selected.storage_ids == ("shared0",)


def test_preferred_host_that_fails_gets_its_reasons_never_another_host():
    w = world()
    with pytest.raises(NoHostFits) as e:
        w.placer.select(request(kind=LIVE, source_host_id="src", prefer_host="oldcpu",
                                disks=(SHARED,)))
    err = e.value
    assert err.reason == "PREFERRED_HOST_REJECTED" and err.metadata["prefer_host"] == "oldcpu"
    assert "preferred host oldcpu cannot take" in err.message and "CPU_MODEL_MISMATCH" in err.message
    assert [(x.filter, x.reason) for x in err.result.rejected[0].rejections] == \
        [("cpu_model", "CPU_MODEL_MISMATCH")]
    assert len(w.book) == 0
    with pytest.raises(NoHostFits) as e:                       # the source itself
        w.placer.select(request(kind=MIGRATE, source_host_id="src", prefer_host="src"))
    assert e.value.result.rejected[0].rejections[0].reason == "SOURCE_HOST"
    ok = w.placer.select(request(kind=LIVE, source_host_id="src", prefer_host="oldcpu",
                                 skip_cpu_check=True, disks=(SHARED,)))
    assert ok.selected.host_name == "oldcpu" and [c.host_name for c in ok.candidates] == ["oldcpu"]


def test_unknown_source_or_preferred_host_is_not_found_naming_the_field():
    w = world()
    with pytest.raises(UnknownHost) as e:
        w.placer.forecast(request(kind=MIGRATE, source_host_id="nope"))
    assert e.value.metadata["field"] == "source_host_id" and "source host 'nope'" in e.value.message
    with pytest.raises(UnknownHost) as e:
        w.placer.select(request(kind=MIGRATE, source_host_id="src", prefer_host="nope"))
    assert e.value.metadata["field"] == "prefer_host"


def proto(kind, **kw):
    return scheduler_pb2.SelectHostRequest(
        requirements=scheduler_pb2.ServerRequirements(server_id="vm", vcpu_count=1, memory_mb=64),
        kind=kind, **kw)


@pytest.mark.parametrize("kind, fields, bad", [
    (scheduler_pb2.PLACEMENT_KIND_MIGRATE, {"source_host_id": "h", "skip_cpu_check": True},
     "skip_cpu_check"),
    (scheduler_pb2.PLACEMENT_KIND_RESCUE, {"source_host_id": "h", "skip_kernel_check": True},
     "skip_kernel_check"),
    (scheduler_pb2.PLACEMENT_KIND_CREATE, {"skip_cpu_check": True}, "skip_cpu_check"),
    (scheduler_pb2.PLACEMENT_KIND_CREATE, {"source_host_id": "h"}, "source_host_id"),
    (scheduler_pb2.PLACEMENT_KIND_LIVE_MIGRATE, {}, "source_host_id"),
    (scheduler_pb2.PLACEMENT_KIND_MIGRATE, {}, "source_host_id"),
])
def test_conflicting_flags_are_invalid_naming_the_field(kind, fields, bad):
    with pytest.raises(InvalidRequest) as e:
        request_from_proto(proto(kind, **fields))
    assert e.value.field == bad and e.value.message.startswith(bad + ": ")
    fc = scheduler_pb2.ForecastRequest(requirements=proto(kind).requirements, kind=kind, **fields)
    with pytest.raises(InvalidRequest) as e:
        forecast_from_proto(fc)
    assert e.value.field == bad


def test_migration_fields_reach_the_placement():
    r = request_from_proto(proto(scheduler_pb2.PLACEMENT_KIND_LIVE_MIGRATE, source_host_id="h1",
                                 skip_cpu_check=True, skip_kernel_check=True))
    assert (r.kind, r.source_host_id, r.skip_cpu_check, r.skip_kernel_check) == \
        (LIVE, "h1", True, True)


def test_guests_in_flight_and_spread_lower_the_score():
    w = World(host("a", "alpha"), host("b", "beta"), host("c", "gamma", server_count=3))
    first = w.placer.select(request(1, 64, server_id="s1"))
    assert first.selected.host_name == "alpha"          # tie on capacity: by name
    assert [c.host_name for c in first.candidates] == ["alpha", "beta", "gamma"]
    second = w.placer.select(request(1, 64, server_id="s2"))
    assert second.selected.host_name == "beta"          # alpha has a guest in flight
    assert w.book.in_flight("a") == 1 and w.book.in_flight("b") == 1
    w.placer.release(first.reservation.id)
    assert w.book.in_flight("a") == 0
