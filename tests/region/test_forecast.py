"""ForecastMigration through a real region and a real scheduler in this process (real gRPC
on 127.0.0.1 ephemeral ports), fake host agents; the scheduler's view is fed by the
region's WatchHosts as in production."""

from __future__ import annotations

from types import SimpleNamespace

import grpc
import pytest
from helpers import free_port
from ferry_common.errors import error_info
from ferry_proto.region.v1 import migration_service_pb2 as mpb
from ferry_proto.region.v1 import migration_service_pb2_grpc
from ferry_proto.region.v1 import resources_pb2 as r
from ferry_proto.region.v1 import server_service_pb2 as spb
from ferry_scheduler.app import SchedulerConfig, start_scheduler

from .conftest import Env
from .fakes import serve_agent

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def real(sqlite_url, region_factory, tmp_path):
    sched_addr = f"127.0.0.1:{free_port()}"
    region = await region_factory(db_url=sqlite_url, scheduler=sched_addr)
    scheduler = await start_scheduler(SchedulerConfig(
        listen=sched_addr, region=f"127.0.0.1:{region.port}", reconnect_min=0.05,
        reconnect_max=0.2))
    env = Env(region, SimpleNamespace(servicer=SimpleNamespace(hosts=[])), tmp_path)
    agents = []
    try:
        await scheduler.wait_synced(10)
        for hid, kw in (("h1", {}), ("h2", {}), ("h3", {"cpu_model": "Other CPU"}),
                        ("h4", {"kernel_version": "6.9.0"}), ("h5", {"mem_size_mb": 32})):
            agent = await serve_agent(hid)
            agents.append(agent)
            await env.registry.RegisterHost(env.register_request(hid, agent.address, name=hid, **kw))
        await scheduler.cache.wait_for(lambda c: len(c) == 5, timeout=10)
        await env.upload_image("boot")
        env.migrations = migration_service_pb2_grpc.MigrationServiceStub(env.channel)
        env.real_scheduler = scheduler
        yield env
    finally:
        await env.close()
        await region.stop()
        await scheduler.stop(grace=0)
        for a in agents:
            await a.stop()


async def create(env, name: str, **kw) -> r.Server:
    resp = await env.servers.CreateServer(env.create_request(name, networks=["net0"], **kw))
    task = await env.wait_task(resp.task_id)
    assert task.state == r.TASK_STATE_SUCCEEDED, task
    return await env.server(name)


def reasons(resp):
    return {rh.host_name: [(x.filter, x.reason) for x in rh.rejections] for rh in resp.rejected}


async def test_forecast_live_cold_and_rescue(real):
    env = real
    vm = await create(env, "vm1", memory_mb=128, vcpu_count=2)
    src = vm.host_id
    assert src in ("h1", "h2", "h3", "h4")

    resp = await env.migrations.ForecastMigration(mpb.ForecastMigrationRequest(id="vm1", live=True))
    rej = reasons(resp)
    assert rej[src] == [("source_host", "SOURCE_HOST")]
    assert rej["h5"] == [("memory", "INSUFFICIENT_MEMORY")]
    if src != "h3":
        assert ("cpu_model", "CPU_MODEL_MISMATCH") in rej["h3"]
    if src != "h4":
        assert ("kernel", "KERNEL_MISMATCH") in rej["h4"]
    assert resp.can_place == bool(resp.candidates)
    assert all(c.score > 0 for c in resp.candidates)
    assert {c.host_name for c in resp.candidates} | set(rej) == {"h1", "h2", "h3", "h4", "h5"}
    msg = next(x for x in resp.rejected if x.host_name == "h5").rejections
    assert "needs 128 MiB" in msg[0].message

    skip = await env.migrations.ForecastMigration(mpb.ForecastMigrationRequest(
        id=vm.id, live=True, skip_cpu_check=True, skip_kernel_check=True))
    assert sorted(c.host_name for c in skip.candidates) == \
        sorted({"h1", "h2", "h3", "h4"} - {src})
    assert [c.score for c in skip.candidates] == sorted((c.score for c in skip.candidates),
                                                        reverse=True)

    cold = await env.migrations.ForecastMigration(mpb.ForecastMigrationRequest(id="vm1"))
    assert sorted(c.host_name for c in cold.candidates) == sorted({"h1", "h2", "h3", "h4"} - {src})

    other = next(h for h in ("h1", "h2", "h3") if h != src)
    pref = await env.migrations.ForecastMigration(mpb.ForecastMigrationRequest(
        id="vm1", prefer_host="h5"))
    assert not pref.can_place and list(reasons(pref)) == ["h5"]
    pref = await env.migrations.ForecastMigration(mpb.ForecastMigrationRequest(
        id="vm1", prefer_host=other))
    assert pref.can_place and [c.host_name for c in pref.candidates] == [other]

    # the local system disk cannot be rescued: every host says which disk
    rescue = await env.migrations.ForecastMigration(mpb.ForecastMigrationRequest(
        id="vm1", rescue_mode=True))
    assert not rescue.can_place
    assert all(("rescue", "DISK_NOT_SHARED") in v for k, v in reasons(rescue).items() if k != src)
    assert len(env.real_scheduler.book) == 0 or all(
        x.server_id != vm.id for x in env.real_scheduler.book.live())


async def test_forecast_rescue_of_a_shared_disk_server(real):
    env = real
    vm = await create(env, "vm2", system_disk=spb.DiskRequest(storage="shared"))
    resp = await env.migrations.ForecastMigration(mpb.ForecastMigrationRequest(
        id="vm2", rescue_mode=True))
    assert resp.can_place
    assert vm.host_id not in {c.host_id for c in resp.candidates}


@pytest.mark.parametrize("req, code, field", [
    (mpb.ForecastMigrationRequest(id="nope"), grpc.StatusCode.NOT_FOUND, None),
    (mpb.ForecastMigrationRequest(id=""), grpc.StatusCode.INVALID_ARGUMENT, "id"),
    (mpb.ForecastMigrationRequest(id="vm1", skip_cpu_check=True), grpc.StatusCode.INVALID_ARGUMENT,
     "skip_cpu_check"),
    (mpb.ForecastMigrationRequest(id="vm1", live=True, rescue_mode=True),
     grpc.StatusCode.INVALID_ARGUMENT, "rescue_mode"),
    (mpb.ForecastMigrationRequest(id="vm1", prefer_host="nohost"), grpc.StatusCode.NOT_FOUND,
     None),
])
async def test_bad_forecast_requests(real, req, code, field):
    env = real
    await create(env, "vm1")
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await env.migrations.ForecastMigration(req)
    assert e.value.code() == code
    if field:
        assert error_info(e.value).metadata["field"] == field
    if code == grpc.StatusCode.NOT_FOUND:
        assert ("nope" if req.id == "nope" else "nohost") in e.value.details()
