"""Forecast and migration placement over real gRPC: a fake region's WatchHosts feeding the
real scheduler on 127.0.0.1 ephemeral ports."""

from __future__ import annotations

import grpc
import pytest
from fake_region import FakeRegion
from ferry_common.errors import error_info
from ferry_proto.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from ferry_scheduler.app import SchedulerConfig, start_scheduler
from ferry_scheduler.details import placement_from_error
from sched_helpers import host_proto

pytestmark = pytest.mark.timeout(30)

LIVE = scheduler_pb2.PLACEMENT_KIND_LIVE_MIGRATE


@pytest.fixture
async def cluster():
    hosts = [host_proto("h1", "src", shared={"shared0": 1000}),
             host_proto("h2", "twin", shared={"shared0": 1000}),
             host_proto("h3", "amd", cpu_model="AMD EPYC", shared={"shared0": 1000}),
             host_proto("h4", "newkernel", kernel_version="6.5.0", shared={"shared0": 1000}),
             host_proto("h5", "small", mem_size_mb=512, shared={"shared0": 1000})]
    hosts += [host_proto(f"x{i:03d}", f"busy-{i:03d}", cpu_count=1, cpu_used=1,
                         shared={"shared0": 1000}) for i in range(400)]
    region = FakeRegion(hosts)
    await region.start()
    s = await start_scheduler(SchedulerConfig(listen="127.0.0.1:0", region=region.address))
    try:
        await s.wait_synced(timeout=5)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{s.port}") as ch:
            yield s, scheduler_pb2_grpc.SchedulerServiceStub(ch)
    finally:
        await s.stop(grace=0)
        await region.stop()


def requirements(memory_mb=1024):
    return scheduler_pb2.ServerRequirements(
        server_id="vm1", vcpu_count=1, memory_mb=memory_mb, networks=["net0"],
        disks=[scheduler_pb2.DiskRequirement(size_mb=5000, shared=True, storage_id="shared0"),
               scheduler_pb2.DiskRequirement(size_mb=100)])


async def test_forecast_lists_every_host_untruncated_and_reserves_nothing(cluster):
    s, stub = cluster
    resp = await stub.Forecast(scheduler_pb2.ForecastRequest(
        requirements=requirements(), kind=LIVE, source_host_id="h1", exclude_host_ids=["h1"]))
    assert resp.can_place and not resp.stale
    assert [c.host_name for c in resp.candidates] == ["twin"]
    assert list(resp.candidates[0].storage_ids) == ["shared0", "h2-local"]
    assert len(resp.rejected) == 404                       # no trailer budget here
    by_name = {r.host_name: [(x.filter, x.reason) for x in r.rejections] for r in resp.rejected}
    assert by_name["src"] == [("source_host", "SOURCE_HOST")]
    assert by_name["amd"] == [("cpu_model", "CPU_MODEL_MISMATCH")]
    assert by_name["newkernel"] == [("kernel", "KERNEL_MISMATCH")]
    assert by_name["small"] == [("memory", "INSUFFICIENT_MEMORY")]
    assert by_name["busy-000"] == [("cpu", "INSUFFICIENT_CPU")]
    assert all(x.message for r in resp.rejected for x in r.rejections)
    assert len(s.book) == 0

    skip = await stub.Forecast(scheduler_pb2.ForecastRequest(
        requirements=requirements(), kind=LIVE, source_host_id="h1", skip_cpu_check=True,
        skip_kernel_check=True))
    assert [c.host_name for c in skip.candidates] == ["amd", "newkernel", "twin"]
    assert [c.score for c in skip.candidates] == sorted((c.score for c in skip.candidates),
                                                        reverse=True)

    nothing = await stub.Forecast(scheduler_pb2.ForecastRequest(
        requirements=requirements(memory_mb=100_000), kind=scheduler_pb2.PLACEMENT_KIND_MIGRATE,
        source_host_id="h1"))
    assert not nothing.can_place and not nothing.candidates and len(nothing.rejected) == 405


async def test_live_placement_with_preferred_host_that_fails(cluster):
    _, stub = cluster
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.SelectHost(scheduler_pb2.SelectHostRequest(
            requirements=requirements(), kind=LIVE, source_host_id="h1", prefer_host="amd"))
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(e.value)
    assert info.reason == "PREFERRED_HOST_REJECTED" and info.metadata["prefer_host"] == "h3"
    detail = placement_from_error(e.value)
    assert [(r.host_name, [x.reason for x in r.rejections]) for r in detail.rejected] == \
        [("amd", ["CPU_MODEL_MISMATCH"])]
    resp = await stub.SelectHost(scheduler_pb2.SelectHostRequest(
        requirements=requirements(), kind=LIVE, source_host_id="h1", prefer_host="amd",
        skip_cpu_check=True))
    assert resp.selected.host_name == "amd" and resp.reservation.host_id == "h3"
    assert list(resp.selected.storage_ids) == ["shared0", "h3-local"]


async def test_migration_select_keeps_the_answer_short(cluster):
    _, stub = cluster
    resp = await stub.SelectHost(scheduler_pb2.SelectHostRequest(
        requirements=requirements(), kind=scheduler_pb2.PLACEMENT_KIND_MIGRATE,
        source_host_id="h1", exclude_host_ids=["h1"]))
    assert resp.selected.host_name in ("amd", "newkernel", "twin")
    assert len(resp.rejected) == 16 and len(resp.candidates) == 3     # rejected: first by name


@pytest.mark.parametrize("fields, code, field", [
    ({"kind": scheduler_pb2.PLACEMENT_KIND_MIGRATE, "source_host_id": "h1",
      "skip_cpu_check": True}, grpc.StatusCode.INVALID_ARGUMENT, "skip_cpu_check"),
    ({"kind": LIVE}, grpc.StatusCode.INVALID_ARGUMENT, "source_host_id"),
    ({"kind": LIVE, "source_host_id": "nope"}, grpc.StatusCode.NOT_FOUND, "source_host_id"),
    ({"kind": LIVE, "source_host_id": "h1", "prefer_host": "nope"}, grpc.StatusCode.NOT_FOUND,
     "prefer_host"),
])
async def test_bad_migration_requests(cluster, fields, code, field):
    _, stub = cluster
    for call, req in ((stub.Forecast, scheduler_pb2.ForecastRequest),
                      (stub.SelectHost, scheduler_pb2.SelectHostRequest)):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call(req(requirements=requirements(), **fields))
        assert e.value.code() == code
        assert error_info(e.value).metadata["field"] == field
