"""Real gRPC on 127.0.0.1 ephemeral ports: a fake region's WatchHosts feeding the real scheduler."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from fake_region import FakeRegion
from ferry_common.errors import error_info, status_from_rpc_error
from ferry_proto.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from ferry_scheduler.app import SchedulerConfig, start_scheduler
from ferry_scheduler.details import placement_from_error
from ferry_scheduler.servicer import HOST_VIEW_METADATA_KEY
from sched_helpers import eventually, host_proto, select_request

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def region():
    r = FakeRegion([host_proto("h1", "alpha", mem_size_mb=2048),
                    host_proto("h2", "beta", enabled=False)])
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
async def scheduler(region):
    s = await start_scheduler(SchedulerConfig(listen="127.0.0.1:0", region=region.address,
                                              reconnect_min=0.05, reconnect_max=0.2))
    try:
        await s.wait_synced(timeout=5)
        yield s
    finally:
        await s.stop(grace=0)


@pytest.fixture
async def stub(scheduler):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{scheduler.port}") as ch:
        yield scheduler_pb2_grpc.SchedulerServiceStub(ch)


async def test_region_change_is_seen_by_next_placement_and_rejections_travel(
        region, scheduler, stub):
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.SelectHost(select_request(vcpu=2, memory_mb=4096, server_id="vm1"))
    err = e.value
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "no host can take server vm1" in err.details()
    status = status_from_rpc_error(err)
    assert status is not None and status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    info = error_info(err)
    assert info.reason == "NO_HOST_FITS" and info.metadata["hosts_rejected"] == "2"
    detail = placement_from_error(err)
    assert {r.host_name: [(x.filter, x.reason) for x in r.rejections] for r in detail.rejected} \
        == {"alpha": [("memory", "INSUFFICIENT_MEMORY")],
            "beta": [("status", "HOST_DISABLED")]}
    assert "needs 4096 MiB, 2048 MiB free of 2048 MiB" in detail.rejected[0].rejections[0].message

    version = scheduler.cache.version
    region.push([host_proto("h1", "alpha", mem_size_mb=8192)])
    await scheduler.cache.wait_for(lambda c: c.version > version, timeout=5)
    resp = await stub.SelectHost(select_request(vcpu=2, memory_mb=4096, server_id="vm1"))
    assert resp.selected.host_id == "h1" and resp.reservation.host_id == "h1"
    assert resp.selected.storage_ids == [] and resp.reservation.id.startswith("rsv-")
    assert [r.host_id for r in resp.rejected] == ["h2"]

    region.push(removed=["h1"])
    await scheduler.cache.wait_for(lambda c: c.get("h1") is None, timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.SelectHost(select_request(server_id="vm2", prefer_host="alpha"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


async def test_fifty_concurrent_placements_on_room_for_ten(region, scheduler, stub):
    region.push([host_proto("h1", "alpha", cpu_count=8, mem_size_mb=4 * 1024),
                 host_proto("h3", "gamma", cpu_count=64, mem_size_mb=6 * 1024 + 1000)])
    await scheduler.cache.wait_for(lambda c: c.get("h3") is not None
                                   and c.get("h1").mem_size_mb == 4096, timeout=5)

    async def place(i: int):
        try:
            return await stub.SelectHost(select_request(vcpu=1, memory_mb=1024,
                                                        server_id=f"s{i}"))
        except grpc.aio.AioRpcError as e:
            return e

    results = await asyncio.gather(*(place(i) for i in range(50)))
    ok = [r for r in results if isinstance(r, scheduler_pb2.SelectHostResponse)]
    failed = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(ok) == 10 and len(failed) == 40
    assert {e.code() for e in failed} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert sorted(r.selected.host_id for r in ok).count("h1") == 4
    assert len({r.reservation.id for r in ok}) == 10

    # confirm one, release another; a release frees a slot, a confirm does not
    await stub.ConfirmReservation(scheduler_pb2.ConfirmReservationRequest(id=ok[0].reservation.id))
    await stub.ReleaseReservation(scheduler_pb2.ReleaseReservationRequest(id=ok[1].reservation.id))
    await stub.ReleaseReservation(scheduler_pb2.ReleaseReservationRequest(id=ok[1].reservation.id))
    again = await asyncio.gather(*(place(100 + i) for i in range(3)))
    assert sum(isinstance(r, scheduler_pb2.SelectHostResponse) for r in again) == 1
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.ConfirmReservation(scheduler_pb2.ConfirmReservationRequest(
            id=ok[1].reservation.id))
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(e.value).metadata["state"] == "RELEASED"
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.ReleaseReservation(scheduler_pb2.ReleaseReservationRequest(id="rsv-unknown"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


async def test_prefer_host_failing_over_grpc(stub):
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.SelectHost(select_request(prefer_host="beta"))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(e.value).reason == "PREFERRED_HOST_REJECTED"
    detail = placement_from_error(e.value)
    assert [r.host_id for r in detail.rejected] == ["h2"] and not detail.candidates


@pytest.mark.parametrize("request_, field", [
    (select_request(vcpu=0), "requirements.vcpu_count"),
    (select_request(memory_mb=-5), "requirements.memory_mb"),
    (select_request(disks=[scheduler_pb2.DiskRequirement(size_mb=1),
                           scheduler_pb2.DiskRequirement(size_mb=-1)]),
     "requirements.disks[1].size_mb"),
    (select_request(kind=99), "kind"),
    (select_request(networks=[""]), "requirements.networks[0]"),
    (select_request(ttl=-1), "reservation_ttl_seconds"),
    (scheduler_pb2.SelectHostRequest(), "requirements.vcpu_count"),
])
async def test_bad_input_is_invalid_argument_naming_the_field(stub, request_, field):
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.SelectHost(request_)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(e.value).metadata["field"] == field
    assert e.value.details().startswith(field)


async def test_bad_reservation_ids(stub):
    for call, req in ((stub.ConfirmReservation, scheduler_pb2.ConfirmReservationRequest),
                      (stub.ReleaseReservation, scheduler_pb2.ReleaseReservationRequest)):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call(req(id=""))
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_info(e.value).metadata["field"] == "id"
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call(req(id="rsv-nope"))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


async def test_region_outage_serves_stale_view_then_resyncs(region, scheduler, stub):
    await region.stop()
    await scheduler.cache.wait_for(lambda c: c.stale, timeout=5)
    assert "unreachable" in scheduler.cache.stale_reason or "ended" in scheduler.cache.stale_reason
    call = stub.SelectHost(select_request(memory_mb=512, server_id="during-outage"))
    resp = await call
    assert resp.selected.host_id == "h1"
    assert (HOST_VIEW_METADATA_KEY, "stale") in tuple(await call.trailing_metadata())

    # the region comes back on the same port with a changed inventory
    region.hosts = {"h9": host_proto("h9", "omega")}
    await region.start()
    await scheduler.wait_synced(timeout=10)
    assert scheduler.cache.get("h1") is None
    resp = await stub.SelectHost(select_request(server_id="after-outage"))
    assert resp.selected.host_id == "h9"
    assert scheduler.book.get(resp.reservation.id) is not None
    assert scheduler.watcher.link.state.name == "SYNCED"


async def test_scheduler_before_region_is_unavailable_until_synced():
    region = FakeRegion([host_proto("h1")])
    await region.start()
    port = region.port
    await region.stop()
    s = await start_scheduler(SchedulerConfig(listen="127.0.0.1:0", region=f"127.0.0.1:{port}",
                                              reconnect_min=0.05, reconnect_max=0.2))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{s.port}") as ch:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as e:   # waits half its deadline, then says
                await stub.SelectHost(select_request(), timeout=0.5)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
            assert error_info(e.value).reason == "HOST_VIEW_NOT_READY"
            await eventually(lambda: s.watcher.attempts >= 2, what="reconnect attempts")
            await region.start()
            # a SelectHost racing the first snapshot waits for it instead of failing
            resp = await stub.SelectHost(select_request(), timeout=10)
            assert resp.selected.host_id == "h1"
    finally:
        await s.stop(grace=0)
        await s.stop(grace=0)      # idempotent
        await region.stop()


async def test_many_rejected_hosts_fit_in_the_trailer():
    region = FakeRegion([host_proto(f"h{i:03d}", f"host-{i:03d}", mem_size_mb=1024 + i)
                         for i in range(300)])
    await region.start()
    s = await start_scheduler(SchedulerConfig(listen="127.0.0.1:0", region=region.address))
    try:
        await s.wait_synced(timeout=5)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{s.port}") as ch:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(ch)
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await stub.SelectHost(select_request(memory_mb=4096))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        info = error_info(e.value)
        assert info.metadata["reasons"] == "INSUFFICIENT_MEMORY=300"
        assert info.metadata["details_truncated"] == "hosts"
        detail = placement_from_error(e.value)
        assert 0 < len(detail.rejected) == int(info.metadata["hosts_in_details"]) < 300
        assert all(r.rejections[0].reason == "INSUFFICIENT_MEMORY" for r in detail.rejected)
        assert "of 300 host(s)" in e.value.details()
    finally:
        await s.stop(grace=0)
        await region.stop()
