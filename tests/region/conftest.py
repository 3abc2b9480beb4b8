"""Region test set-up: a real grpc.aio region on an ephemeral port, against a fake
scheduler and fake host agents (real gRPC servers too), on SQLite or PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from sqlalchemy import func, select

from ferry_proto.region.v1 import (
    host_service_pb2_grpc,
    image_service_pb2 as ipb,
    image_service_pb2_grpc,
    registry_service_pb2 as rpb,
    registry_service_pb2_grpc,
    resources_pb2 as r,
    server_service_pb2 as spb,
    server_service_pb2_grpc,
    task_service_pb2 as tpb,
    task_service_pb2_grpc,
)
from ferry_region.app import Region, start_region
from ferry_region.config import RegionConfig, Timeouts
from ferry_region.db import models

from .fakes import Served, serve_agent, serve_scheduler

TEST_TIMEOUTS = Timeouts(agent_call=5.0, prepare_guest=10.0, start_guest=5.0, stop_guest=1,
                         scheduler_call=5.0, stage=30.0, drain=0.5, reservation_ttl=30)

BOOT_SECTOR = b"\xeb\xfe" + b"\x00" * 508 + b"\x55\xaa"  # jmp $ ; boot signature


def raw_image_bytes(size: int = 1024 * 1024) -> bytes:
    return BOOT_SECTOR + b"\x00" * (size - len(BOOT_SECTOR))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'region.db'}"
    server = request.getfixturevalue("postgres_server")
    return server.new_database()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'region.db'}"


async def poll(check: Callable, timeout: float = 15.0, interval: float = 0.05, what: str = ""):
    """Awaits `check()` (sync or async) until it returns a truthy value, or fails."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or check}: "
                                 f"last={last!r}")
        await asyncio.sleep(interval)


class Env:
    """A running region plus its fake peers and client stubs."""

    def __init__(self, region: Region, scheduler: Served, tmp: Path) -> None:
        self.region = region
        self.scheduler = scheduler
        self.tmp = tmp
        self.agents: dict[str, Served] = {}
        self._open_channel()

    def _open_channel(self) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.region.port}")
        self.servers = server_service_pb2_grpc.ServerServiceStub(self.channel)
        self.hosts = host_service_pb2_grpc.HostServiceStub(self.channel)
        self.images = image_service_pb2_grpc.ImageServiceStub(self.channel)
        self.tasks = task_service_pb2_grpc.TaskServiceStub(self.channel)
        self.registry = registry_service_pb2_grpc.HostRegistryServiceStub(self.channel)

    async def reconnect(self, region: Region) -> None:
        await self.channel.close()
        self.region = region
        self._open_channel()

    @property
    def fake_scheduler(self):
        return self.scheduler.servicer

    def register_request(self, host_id: str, address: str, **kw) -> rpb.RegisterHostRequest:
        req = rpb.RegisterHostRequest(
            host_id=host_id, name=kw.pop("name", f"name-{host_id}"), access_address=address,
            cpu_model="Fake CPU", cpu_microcode="0x1", kernel_version="6.1.0",
            accelerator=r.ACCELERATOR_TCG, cpu_count=8, mem_size_mb=16384,
            storages=[r.HostStorage(storage_id=f"{host_id}-local", name="local",
                                    kind=r.STORAGE_KIND_LOCAL, path=f"/srv/{host_id}",
                                    capacity_mb=100_000, free_mb=90_000),
                      r.HostStorage(storage_id="shared0", name="shared0",
                                    kind=r.STORAGE_KIND_SHARED, path="/srv/shared",
                                    capacity_mb=500_000, free_mb=400_000)],
            wire="wire0", networks=["net0"], agent_version="test")
        for k, v in kw.items():
            setattr(req, k, v)
        return req

    async def add_host(self, host_id: str, *, schedulable: bool = True, address: str | None = None,
                       **kw):
        """Starts a fake agent (unless `address` is given) and registers it."""
        agent = None
        if address is None:
            agent = await serve_agent(host_id)
            self.agents[host_id] = agent
            address = agent.address
        resp = await self.registry.RegisterHost(self.register_request(host_id, address, **kw))
        if schedulable:
            self.fake_scheduler.hosts.append((host_id, resp.host.name))
        return agent.servicer if agent else None

    async def upload_image(self, name: str = "boot", data: bytes | None = None,
                           fmt: int = r.DISK_FORMAT_RAW) -> r.Image:
        payload = raw_image_bytes() if data is None else data

        async def parts():
            yield ipb.CreateImageRequest(metadata=ipb.ImageMetadata(name=name, format=fmt))
            for i in range(0, len(payload), 1024 * 1024):
                yield ipb.CreateImageRequest(chunk=payload[i:i + 1024 * 1024])
        return (await self.images.CreateImage(parts())).image

    def create_request(self, name: str, **kw) -> spb.CreateServerRequest:
        kw.setdefault("image", "boot")
        kw.setdefault("vcpu_count", 1)
        kw.setdefault("memory_mb", 64)
        return spb.CreateServerRequest(name=name, **kw)

    async def task(self, task_id: str) -> r.Task:
        return (await self.tasks.GetTask(tpb.GetTaskRequest(id=task_id))).task

    async def wait_task(self, task_id: str, timeout: float = 20.0) -> r.Task:
        async def done():
            t = await self.task(task_id)
            return t if t.state in (r.TASK_STATE_SUCCEEDED, r.TASK_STATE_FAILED) else None
        return await poll(done, timeout, what=f"task {task_id} to end")

    async def server(self, ident: str) -> r.Server:
        return (await self.servers.GetServer(spb.GetServerRequest(id=ident))).server

    def counts(self) -> dict[str, int]:
        """Row counts of every table (to prove a rejected request changed nothing)."""
        def tx(session):
            return {t.__tablename__: session.scalar(select(func.count()).select_from(t))
                    for t in (models.Host, models.Storage, models.HostStorage, models.Network,
                              models.Server, models.Disk, models.ServerNetwork, models.Image,
                              models.Task)}
        return self.region.db.read_sync(tx)

    async def close(self) -> None:
        await self.channel.close()


@pytest.fixture
async def region_factory(tmp_path: Path):
    """start(db_url=..., scheduler=..., **config overrides) -> Region; all stopped at teardown."""
    started: list[Region] = []

    async def start(db_url: str | None = None, scheduler: str = "127.0.0.1:1", **kw) -> Region:
        cfg = RegionConfig(listen="127.0.0.1:0", data_dir=tmp_path / "region", db_url=db_url,
                           scheduler=scheduler, etcd=kw.pop("etcd", ""),
                           timeouts=kw.pop("timeouts", TEST_TIMEOUTS), shutdown_grace=0.5, **kw)
        region = await start_region(cfg)
        started.append(region)
        return region

    yield start
    for region in started:
        await region.stop()


async def _env(db_url: str, region_factory, tmp_path: Path, **kw):
    sched = await serve_scheduler()
    region = await region_factory(db_url=db_url, scheduler=sched.address, **kw)
    env = Env(region, sched, tmp_path)
    env.region_factory = region_factory
    env.db_url = db_url
    return env


async def _close_env(env: Env) -> None:
    await env.close()
    await env.region.stop()
    for agent in env.agents.values():
        await agent.stop()
    await env.scheduler.stop()


@pytest.fixture
async def env(sqlite_url, region_factory, tmp_path):
    """A region on SQLite with one fake host agent "h1" and a raw image "boot"."""
    e = await _env(sqlite_url, region_factory, tmp_path)
    await e.add_host("h1")
    await e.upload_image("boot")
    yield e
    await _close_env(e)


@pytest.fixture
async def env_any(db_url, region_factory, tmp_path):
    """Like `env`, once on SQLite and once on PostgreSQL."""
    e = await _env(db_url, region_factory, tmp_path)
    await e.add_host("h1")
    await e.upload_image("boot")
    yield e
    await _close_env(e)


@pytest.fixture
async def bare_env(sqlite_url, region_factory, tmp_path):
    """A region with no hosts and no images."""
    e = await _env(sqlite_url, region_factory, tmp_path)
    yield e
    await _close_env(e)


def replace_timeouts(**kw) -> Timeouts:
    return dataclasses.replace(TEST_TIMEOUTS, **kw)
