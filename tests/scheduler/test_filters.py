"""Each filter: passes a fitting host, rejects with a machine reason and the figures."""

from __future__ import annotations

from ferry_proto.region.v1 import resources_pb2
from ferry_scheduler.clock import ManualClock
from ferry_scheduler.filters import (
    REGISTRY,
    FilterContext,
    active_filters,
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
from ferry_scheduler.model import DiskRequest, PlacementKind
from ferry_scheduler.reservations import ReservationBook
from sched_helpers import host, request


def ctx(book: ReservationBook | None = None, source=None) -> FilterContext:
    return FilterContext(book=book or ReservationBook(ManualClock()), source=source)


def reasons(rejections) -> list[str]:
    return [r.reason for r in rejections]


# ---- status ----

def test_status_passes_enabled_running_online_host():
    assert status.check(host("h1"), request(), ctx()) == []


def test_status_reports_every_failed_condition():
    h = host("h1", enabled=False, status=resources_pb2.HOST_STATUS_SHUTDOWN,
             host_status=resources_pb2.HOST_HEALTH_OFFLINE)
    out = status.check(h, request(), ctx())
    assert reasons(out) == ["HOST_DISABLED", "HOST_NOT_RUNNING", "HOST_OFFLINE"]
    assert all(r.filter == "status" for r in out)
    assert "shutdown" in out[1].message
    assert "offline" in out[2].message


def test_status_ready_host_is_not_running():
    out = status.check(host("h1", status=resources_pb2.HOST_STATUS_READY), request(), ctx())
    assert reasons(out) == ["HOST_NOT_RUNNING"]
    assert "ready" in out[0].message


# ---- exclude / source host ----

def test_exclude():
    req = request(exclude=frozenset({"h2"}))
    assert exclude.applies(req) and not exclude.applies(request())
    assert exclude.check(host("h1"), req, ctx()) == []
    assert reasons(exclude.check(host("h2"), req, ctx())) == ["EXCLUDED"]


def test_source_host():
    req = request(source_host_id="h1", kind=PlacementKind.MIGRATE)
    assert source_host.applies(req) and not source_host.applies(request())
    assert reasons(source_host.check(host("h1"), req, ctx())) == ["SOURCE_HOST"]
    assert source_host.check(host("h2"), req, ctx()) == []


# ---- cpu ----

def test_cpu_with_cmtbound_and_reservations():
    h = host("h1", cpu_count=4, cpu_cmtbound=2.0, cpu_used=5)       # 8 total, 3 free
    assert cpu.check(h, request(vcpu=3), ctx()) == []
    book = ReservationBook(ManualClock())
    book.reserve(host_id="h1", server_id="x", vcpu=2, memory_mb=1, storage_mb={}, ttl=60)
    out = cpu.check(h, request(vcpu=3), ctx(book))
    assert reasons(out) == ["INSUFFICIENT_CPU"]
    assert out[0].message == ("needs 3 vCPU, 1 free of 8 (4 pCPU x cmtbound 2, used 5, "
                              "reserved 2)")


def test_cpu_unset_cmtbound_means_one():
    h = host("h1", cpu_count=2, cpu_cmtbound=0.0)
    assert cpu.check(h, request(vcpu=2), ctx()) == []
    assert reasons(cpu.check(h, request(vcpu=3), ctx())) == ["INSUFFICIENT_CPU"]


# ---- memory ----

def test_memory_figures():
    h = host("h1", mem_size_mb=8192, mem_cmtbound=1.0, mem_reserved_mb=512, mem_used_mb=6144)
    # 8192 - 512 - 6144 = 1536 free
    assert memory.check(h, request(memory_mb=1536), ctx()) == []
    out = memory.check(h, request(memory_mb=2048), ctx())
    assert reasons(out) == ["INSUFFICIENT_MEMORY"]
    assert out[0].filter == "memory"
    assert out[0].message == ("needs 2048 MiB, 1536 MiB free of 8192 MiB (cmtbound 1, "
                              "host reserved 512, used 6144, reserved 0)")


def test_memory_counts_reservations_and_cmtbound():
    h = host("h1", mem_size_mb=4096, mem_cmtbound=1.5)          # 6144 usable
    book = ReservationBook(ManualClock())
    book.reserve(host_id="h1", server_id="x", vcpu=1, memory_mb=5000, storage_mb={}, ttl=60)
    assert memory.check(h, request(memory_mb=1144), ctx(book)) == []
    out = memory.check(h, request(memory_mb=1145), ctx(book))
    assert "1144 MiB free" in out[0].message and "reserved 5000" in out[0].message
    assert "cmtbound 1.5" in out[0].message


# ---- storage ----

def test_storage_local_disk_prefers_local_then_shared():
    h = host("h1", local_free_mb=1000, shared={"shared0": 50_000})
    c = ctx()
    assert storage.check(h, request(disks=(DiskRequest(800),)), c) == []
    assert c.storage_plans["h1"].storage_ids == ["h1-local"]
    c = ctx()
    assert storage.check(h, request(disks=(DiskRequest(800), DiskRequest(800))), c) == []
    plan = c.storage_plans["h1"]
    assert plan.storage_ids == ["h1-local", "shared0"]
    assert plan.storage_mb == {"h1-local": 800, "shared0": 800}


def test_storage_insufficient_names_disk_and_figures():
    h = host("h1", local_free_mb=1000)
    out = storage.check(h, request(disks=(DiskRequest(600), DiskRequest(600))), ctx())
    assert reasons(out) == ["INSUFFICIENT_STORAGE"]
    assert out[0].message.startswith("disk 1 needs 600 MiB, most free is 400 MiB on h1-local")
    assert "600 MiB taken by earlier disks" in out[0].message


def test_storage_counts_reservations_on_shared_storage_across_hosts():
    book = ReservationBook(ManualClock())
    book.reserve(host_id="h2", server_id="x", vcpu=1, memory_mb=1,
                 storage_mb={"shared0": 9000}, ttl=60)
    h1 = host("h1", local_free_mb=None, shared={"shared0": 10_000})
    req = request(disks=(DiskRequest(2000, shared=True),))
    out = storage.check(h1, req, ctx(book))
    assert reasons(out) == ["INSUFFICIENT_STORAGE"]
    assert "reserved 9000" in out[0].message


def test_storage_shared_disk_needs_shared_storage():
    h = host("h1", shared=None)
    out = storage.check(h, request(disks=(DiskRequest(10, shared=True),)), ctx())
    assert reasons(out) == ["STORAGE_NOT_REACHABLE"]
    assert "needs a shared storage" in out[0].message


def test_storage_named_storage_must_be_mounted_and_shared():
    h = host("h1", shared={"shared0": 1000})
    out = storage.check(h, request(disks=(DiskRequest(10, shared=True, storage_id="shared1"),)),
                        ctx())
    assert reasons(out) == ["STORAGE_NOT_REACHABLE"]
    assert "shared1" in out[0].message and "h1-local, shared0" in out[0].message
    out = storage.check(h, request(disks=(DiskRequest(10, shared=True, storage_id="h1-local"),)),
                        ctx())
    assert reasons(out) == ["STORAGE_NOT_SHARED"]
    c = ctx()
    assert storage.check(h, request(disks=(DiskRequest(10, shared=True, storage_id="shared0"),)),
                         c) == []
    assert c.storage_plans["h1"].storage_ids == ["shared0"]


def test_storage_shared_disk_of_a_migration_needs_no_space():
    h = host("h1", shared={"shared0": 0})
    disk = DiskRequest(5000, shared=True, storage_id="shared0")
    assert reasons(storage.check(h, request(disks=(disk,)), ctx())) == ["INSUFFICIENT_STORAGE"]
    c = ctx()
    assert storage.check(h, request(disks=(disk,), kind=PlacementKind.MIGRATE), c) == []
    assert c.storage_plans["h1"].storage_mb == {}


def test_storage_no_disks_does_not_apply():
    assert not storage.applies(request())


# ---- network ----

def test_network_on_wire():
    h = host("h1", wire="wire0", networks=("net0", "net1"))
    assert network.check(h, request(networks=("net0", "net1")), ctx()) == []
    out = network.check(h, request(networks=("net0", "net2", "net3")), ctx())
    assert reasons(out) == ["NETWORK_NOT_ON_WIRE"]
    assert out[0].message == "network(s) net2, net3 not on wire wire0, which carries net0, net1"


# ---- issue 3: live migration and rescue ----

def test_cpu_model_and_microcode_for_live_migration_only():
    src = host("src", cpu_model="Xeon A", cpu_microcode="0x1")
    live = request(kind=PlacementKind.LIVE_MIGRATE, source_host_id="src")
    assert cpu_model.applies(live)
    assert not cpu_model.applies(request(kind=PlacementKind.MIGRATE, source_host_id="src"))
    assert not cpu_model.applies(request(kind=PlacementKind.LIVE_MIGRATE, source_host_id="src",
                                         skip_cpu_check=True))
    c = ctx(source=src)
    assert cpu_model.check(host("h1", cpu_model="Xeon A", cpu_microcode="0x1"), live, c) == []
    assert reasons(cpu_model.check(host("h1", cpu_model="EPYC"), live, c)) == ["CPU_MODEL_MISMATCH"]
    out = cpu_model.check(host("h1", cpu_model="Xeon A", cpu_microcode="0x2"), live, c)
    assert reasons(out) == ["CPU_MICROCODE_MISMATCH"]
    assert "'0x2'" in out[0].message and "'0x1'" in out[0].message


def test_kernel_for_live_migration():
    src = host("src", kernel_version="6.1.0")
    live = request(kind=PlacementKind.LIVE_MIGRATE, source_host_id="src")
    assert kernel.applies(live)
    assert not kernel.applies(request(kind=PlacementKind.LIVE_MIGRATE, source_host_id="src",
                                      skip_kernel_check=True))
    out = kernel.check(host("h1", kernel_version="5.10.0"), live, ctx(source=src))
    assert reasons(out) == ["KERNEL_MISMATCH"]


def test_rescue_needs_all_disks_shared():
    req = request(kind=PlacementKind.RESCUE,
                  disks=(DiskRequest(10, shared=True), DiskRequest(10)))
    assert rescue.applies(req) and not rescue.applies(request())
    out = rescue.check(host("h1"), req, ctx())
    assert reasons(out) == ["DISK_NOT_SHARED"] and "disk(s) 1" in out[0].message


# ---- registry ----

def test_registry_names_are_unique_and_creation_uses_the_basic_filters():
    names = [f.name for f in REGISTRY]
    assert len(names) == len(set(names))
    req = request(disks=(DiskRequest(1),), networks=("net0",))
    assert [f.name for f in active_filters(req)] == ["status", "cpu", "memory", "storage",
                                                     "network"]
