"""Two in-process host agents (real gRPC, real QEMU under TCG) and a fake region
serving the test guest image; the guests they started are ended by pidfile."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

import grpc
import pytest
from ferry_host.app import Agent, start_agent
from ferry_host.config import AgentConfig
from ferry_host.driver.qmp import QmpDriver
from ferry_host.testguest.build import build_image
from ferry_proto.host.v1 import agent_pb2 as pb
from ferry_proto.host.v1 import agent_pb2_grpc, migration_pb2_grpc
from host.conftest import SerialLog
from host.fake_region import FakeImage, FakeRegion


class LiveEnv:
    def __init__(self, root: Path, region: FakeRegion, image: bytes) -> None:
        self.root = root
        self.region = region
        self.image_sha = hashlib.sha256(image).hexdigest()
        self.shared = root / "shared"
        self.agents: dict[str, Agent] = {}

    def state_dir(self, host_id: str) -> Path:
        return self.root / host_id / "state"

    async def start(self, host_id: str, ip: str) -> Agent:
        config = AgentConfig(host_id=host_id, name=host_id, state_dir=self.state_dir(host_id),
                             local_storage=self.root / host_id / "local", listen=f"{ip}:0",
                             region=None, etcd=None, shared_storage=self.shared, accel="tcg",
                             shutdown_grace=1.0)
        agent = await start_agent(config)
        self.agents[host_id] = agent
        return agent

    def spec(self, guest_id: str, host_id: str, *, shared_data: bool = False,
             local_data: bool = False, memory_mb: int = 64) -> pb.GuestSpec:
        disks = [pb.DiskSpec(disk_id=f"{guest_id}-sys", index=0, storage_id=f"{host_id}-local",
                             size_mb=32, image_id="testguest",
                             image_checksum_sha256=self.image_sha, image_format="raw")]
        if shared_data:
            disks.append(pb.DiskSpec(disk_id=f"{guest_id}-shd", index=1, storage_id="shared0",
                                     size_mb=8))
        if local_data:
            disks.append(pb.DiskSpec(disk_id=f"{guest_id}-dat", index=2,
                                     storage_id=f"{host_id}-local", size_mb=16))
        return pb.GuestSpec(guest_id=guest_id, name=f"vm-{guest_id}", vcpu_count=1,
                            memory_mb=memory_mb, disks=disks)

    def serial(self, host_id: str, guest_id: str) -> SerialLog:
        return SerialLog(self.state_dir(host_id).absolute() / "guests" / guest_id / "serial.log")

    def host(self, agent: Agent) -> agent_pb2_grpc.HostAgentServiceStub:
        return agent_pb2_grpc.HostAgentServiceStub(grpc.aio.insecure_channel(agent.address))

    def mig(self, agent: Agent) -> migration_pb2_grpc.MigrationAgentServiceStub:
        return migration_pb2_grpc.MigrationAgentServiceStub(
            grpc.aio.insecure_channel(agent.address))


@pytest.fixture(scope="session")
def dirty_image(tmp_path_factory) -> Path:
    """A test guest that dirties 24 MiB per pass: hard to converge at 1 MB/s."""
    return build_image(tmp_path_factory.mktemp("dirty") / "dirty.img", dirty_mb=24)


@pytest.fixture
async def live_env(testguest_image):
    root = Path(tempfile.mkdtemp(prefix="fl-", dir="/tmp"))
    image = testguest_image.read_bytes()
    region = await FakeRegion(images={"testguest": FakeImage(image)}).start()
    env = LiveEnv(root, region, image)
    try:
        yield env
    finally:
        for agent in env.agents.values():
            await agent.stop()
        for host in root.iterdir():
            state = host / "state"
            if state.is_dir():
                cleaner = QmpDriver(state)
                for guest_id in cleaner.list_running():
                    await cleaner.stop(guest_id, timeout=2)
        await region.stop()
        shutil.rmtree(root, ignore_errors=True)
