"""SIGKILL a real region process mid-task, start it again: the task ends, the
server is not left transitional."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from helpers import free_port
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ferry_proto.region.v1 import registry_service_pb2_grpc
from ferry_proto.region.v1 import resources_pb2 as r
from ferry_proto.region.v1 import server_service_pb2_grpc
from ferry_proto.region.v1 import task_service_pb2_grpc

from .conftest import Env, poll
from .fakes import serve_agent, serve_scheduler


class RegionProcess:
    def __init__(self, argv: list[str], log: Path) -> None:
        self.argv = argv
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(15)


async def wait_serving(address: str, proc: RegionProcess, log: Path) -> None:
    async with grpc.aio.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)

        async def serving():
            assert proc.proc.poll() is None, log.read_text()[-3000:]
            try:
                resp = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.aio.AioRpcError:
                return False
            return resp.status == health_pb2.HealthCheckResponse.SERVING
        await poll(serving, 30, 0.1, what="region serving")


class _ProcEnv(Env):
    """Env over a channel to a region in another process."""

    def __init__(self, address: str, scheduler) -> None:  # noqa: D107
        self.scheduler = scheduler
        self.agents = {}
        self.address = address
        self._open()

    def _open(self) -> None:
        self.channel = grpc.aio.insecure_channel(self.address)
        self.servers = server_service_pb2_grpc.ServerServiceStub(self.channel)
        self.tasks = task_service_pb2_grpc.TaskServiceStub(self.channel)
        self.registry = registry_service_pb2_grpc.HostRegistryServiceStub(self.channel)
        from ferry_proto.region.v1 import image_service_pb2_grpc
        self.images = image_service_pb2_grpc.ImageServiceStub(self.channel)

    async def reopen(self) -> None:
        await self.channel.close()
        self._open()


@pytest.mark.timeout(120)
async def test_sigkill_mid_task_then_restart(tmp_path):
    sched = await serve_scheduler()
    agent_srv = await serve_agent("k1")
    agent = agent_srv.servicer
    port = free_port()
    address = f"127.0.0.1:{port}"
    log = tmp_path / "region.log"
    proc = RegionProcess([sys.executable, "-m", "ferry_region.main", "--listen", address,
                          "--data-dir", str(tmp_path / "region"), "--scheduler", sched.address,
                          "--etcd", "", "--log-level", "INFO"], log)
    env = None
    try:
        proc.start()
        await wait_serving(address, proc, log)
        env = _ProcEnv(address, sched)
        await env.registry.RegisterHost(env.register_request("k1", agent_srv.address))
        sched.servicer.hosts.append(("k1", "name-k1"))
        await env.upload_image("boot")
        gate = agent.gate("PrepareGuest")
        resp = await env.servers.CreateServer(env.create_request("survivor", auto_start=True))
        await poll(lambda: agent.entered["PrepareGuest"].is_set(), what="PrepareGuest")

        proc.kill(signal.SIGKILL)
        assert proc.proc.returncode == -signal.SIGKILL
        gate.set()

        proc.start()
        await wait_serving(address, proc, log)
        await env.reopen()
        t = await env.wait_task(resp.task_id, timeout=30)
        assert t.state == r.TASK_STATE_SUCCEEDED, (t, log.read_text()[-3000:])
        assert t.resume_count == 1
        s = await env.server("survivor")
        assert s.status == r.SERVER_STATUS_RUNNING and s.task_id == ""
        assert agent.counts["PrepareGuest"] == 2 and agent.counts["StartGuest"] == 1

        # A clean SIGTERM shutdown works too (ordered shutdown, exit 0).
        proc.kill(signal.SIGTERM)
        assert proc.proc.returncode == 0, log.read_text()[-3000:]
    finally:
        proc.kill(signal.SIGKILL)
        if env is not None:
            await env.channel.close()
        await agent_srv.stop()
        await sched.stop()
