"""One trace per client call across region -> scheduler -> host agent.

Region, scheduler and a host agent run in this process (real gRPC over TCP on
127.0.0.1, real etcd, real QEMU under TCG) with an in-memory span exporter, so
the test can see every span each service opened and check they share the
trace id of the client's call.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from fixtures.etcd_server import free_port

from ferry_common.channels import open_channel
from ferry_host.app import start_agent
from ferry_host.config import AgentConfig
from ferry_host.testguest.build import build_image
from ferry_proto.region.v1 import (
    host_service_pb2,
    host_service_pb2_grpc,
    image_service_pb2,
    image_service_pb2_grpc,
    resources_pb2,
    server_service_pb2,
    server_service_pb2_grpc,
    task_service_pb2,
    task_service_pb2_grpc,
)
from ferry_region.app import start_region
from ferry_region.config import RegionConfig
from ferry_scheduler.app import SchedulerConfig, start_scheduler

pytestmark = [pytest.mark.qemu, pytest.mark.etcd]


def _exporter() -> InMemorySpanExporter:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))  # type: ignore[union-attr]
    return exporter


async def _until(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await pred()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def test_create_server_is_one_trace(tmp_path: Path, etcd_server) -> None:
    exporter = _exporter()
    sched_addr = f"127.0.0.1:{free_port()}"
    region = await start_region(RegionConfig(listen="127.0.0.1:0", data_dir=tmp_path / "region",
                                             scheduler=sched_addr, etcd=etcd_server.endpoint))
    scheduler = agent = None
    try:
        scheduler = await start_scheduler(SchedulerConfig(listen=sched_addr,
                                                          region=region.address))
        agent = await start_agent(AgentConfig(
            host_id="trace-host", name="trace-host", state_dir=tmp_path / "agent",
            local_storage=tmp_path / "local", listen="127.0.0.1:0", region=region.address,
            etcd=etcd_server.endpoint, accel="tcg", refresh_interval=2.0))
        channel = open_channel(region.address)
        servers = server_service_pb2_grpc.ServerServiceStub(channel)
        hosts = host_service_pb2_grpc.HostServiceStub(channel)
        images = image_service_pb2_grpc.ImageServiceStub(channel)
        tasks = task_service_pb2_grpc.TaskServiceStub(channel)

        async def host_online():
            resp = await hosts.ListHosts(host_service_pb2.ListHostsRequest())
            return [h for h in resp.hosts if h.host_status == resources_pb2.HOST_HEALTH_ONLINE]
        await _until(host_online, 30, "the agent to register and its lease to show")
        await scheduler.wait_synced(10)

        img = build_image(tmp_path / "guest.img", dirty_mb=4)

        async def upload():
            yield image_service_pb2.CreateImageRequest(metadata=image_service_pb2.ImageMetadata(
                name="guest", format=resources_pb2.DISK_FORMAT_RAW))
            data = img.read_bytes()
            for i in range(0, len(data), 1 << 20):
                yield image_service_pb2.CreateImageRequest(chunk=data[i:i + (1 << 20)])
        await images.CreateImage(upload())

        exporter.clear()
        tracer = trace.get_tracer("test")
        with tracer.start_as_current_span("climc server-create") as root:
            created = await servers.CreateServer(server_service_pb2.CreateServerRequest(
                name="traced", image="guest", vcpu_count=1, memory_mb=64, auto_start=True))
        trace_id = root.get_span_context().trace_id

        async def task_done():
            t = (await tasks.GetTask(task_service_pb2.GetTaskRequest(id=created.task_id))).task
            return t if t.state != resources_pb2.TASK_STATE_RUNNING else None
        task = await _until(task_done, 60, "the create task")
        assert task.state == resources_pb2.TASK_STATE_SUCCEEDED, task.error

        spans = [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]
        names = {s.name for s in spans}
        assert "/ferry.region.v1.ServerService/CreateServer" in names, names
        assert "/ferry.scheduler.v1.SchedulerService/SelectHost" in names, names
        assert "/ferry.host.v1.HostAgentService/PrepareGuest" in names, names
        assert "/ferry.host.v1.HostAgentService/StartGuest" in names, names
        # The scheduler and agent spans are server spans in the same trace, i.e.
        # the context crossed two process boundaries' worth of gRPC metadata.
        kinds = {(s.name, s.kind) for s in spans}
        assert ("/ferry.host.v1.HostAgentService/StartGuest", trace.SpanKind.SERVER) in kinds

        deleted = await servers.DeleteServer(server_service_pb2.DeleteServerRequest(id="traced"))

        async def deleted_done():
            t = (await tasks.GetTask(task_service_pb2.GetTaskRequest(id=deleted.task_id))).task
            return t if t.state != resources_pb2.TASK_STATE_RUNNING else None
        t = await _until(deleted_done, 60, "the delete task")
        assert t.state == resources_pb2.TASK_STATE_SUCCEEDED, t.error
        await channel.close()
    finally:
        if agent is not None:
            await agent.stop()
        if scheduler is not None:
            await scheduler.stop()
        await region.stop()
        # The agent never stops guests on shutdown; make sure none is left.
        from ferry_host.driver.qmp import QmpDriver
        driver = QmpDriver(tmp_path / "agent")
        for gid in driver.list_running():
            await driver.adopt(gid)
            await driver.stop(gid, timeout=0)
