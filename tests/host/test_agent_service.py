"""The host agent as a whole: real gRPC server, real QEMU (TCG) running the test
guest, real etcd; the region side is the small fake in fake_region.py."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import aetcd
import grpc
import pytest

from ferry_common.errors import error_info
from ferry_host.app import Agent, start_agent
from ferry_host.config import AgentConfig
from ferry_host.driver.qmp import QmpDriver
from ferry_host.lease import health_key
from ferry_proto.host.v1 import agent_pb2 as pb
from ferry_proto.host.v1 import agent_pb2_grpc as pb_grpc

from .conftest import SerialLog
from .fake_region import FakeImage, FakeRegion

pytestmark = [pytest.mark.qemu, pytest.mark.etcd]

LISTEN_HOST = "127.0.0.11"


class Env:
    """Folders, a fake region and the agents a test started (stopped in teardown)."""

    def __init__(self, root: Path, region: FakeRegion, etcd_endpoint: str, image: bytes) -> None:
        self.root = root
        self.region = region
        self.etcd_endpoint = etcd_endpoint
        self.image = image
        self.image_sha = hashlib.sha256(image).hexdigest()
        self.shared = root / "shared"
        self.agents: list[Agent] = []

    def state_dir(self, host_id: str) -> Path:
        return self.root / host_id / "state"

    def local_dir(self, host_id: str) -> Path:
        return self.root / host_id / "local"

    def config(self, host_id: str = "h1", **kw) -> AgentConfig:
        base = dict(host_id=host_id, name=f"{host_id}-name", state_dir=self.state_dir(host_id),
                    local_storage=self.local_dir(host_id), listen=f"{LISTEN_HOST}:0",
                    region=self.region.address, etcd=self.etcd_endpoint,
                    shared_storage=self.shared, accel="tcg", lease_ttl=2,
                    networks=("net0", "net1"), wire="wire7", shutdown_grace=1.0)
        base.update(kw)
        return AgentConfig(**base)

    async def start(self, host_id: str = "h1", **kw) -> Agent:
        agent = await start_agent(self.config(host_id, **kw))
        self.agents.append(agent)
        return agent

    def spec(self, guest_id: str, host_id: str = "h1", *, shared_data: bool = False,
             nics: int = 0) -> pb.GuestSpec:
        disks = [pb.DiskSpec(disk_id=f"{guest_id}-sys", index=0, storage_id=f"{host_id}-local",
                             size_mb=32, image_id="testguest",
                             image_checksum_sha256=self.image_sha, image_format="raw")]
        if shared_data:
            disks.append(pb.DiskSpec(disk_id=f"{guest_id}-data", index=1, storage_id="shared0",
                                     size_mb=8))
        return pb.GuestSpec(guest_id=guest_id, name=f"vm-{guest_id}", vcpu_count=1, memory_mb=64,
                            disks=disks,
                            nics=[pb.NicSpec(network="net0", mac=f"52:54:00:00:00:{i + 1:02x}",
                                             index=i) for i in range(nics)])

    def serial(self, host_id: str, guest_id: str) -> SerialLog:
        return SerialLog(self.state_dir(host_id).absolute() / "guests" / guest_id / "serial.log")


@pytest.fixture
async def env(etcd_server, testguest_image):
    # Short absolute paths: QMP socket paths must stay under 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="fh-", dir="/tmp"))
    image = testguest_image.read_bytes()
    region = await FakeRegion(images={
        "testguest": FakeImage(image),
        "corrupt": FakeImage(image[:-1] + b"x", checksum=hashlib.sha256(image).hexdigest()),
    }).start()
    e = Env(root, region, etcd_server.endpoint, image)
    try:
        yield e
    finally:
        for agent in e.agents:
            await agent.stop()
        # End the QEMU processes this test started, found by pidfile and checked cmdline.
        for host in root.iterdir():
            state = host / "state"
            if state.is_dir():
                cleaner = QmpDriver(state)
                for guest_id in cleaner.list_running():
                    await cleaner.stop(guest_id, timeout=2)
        await region.stop()
        shutil.rmtree(root, ignore_errors=True)


def stub(agent: Agent) -> pb_grpc.HostAgentServiceStub:
    channel = grpc.aio.insecure_channel(f"{LISTEN_HOST}:{agent.port}")
    return pb_grpc.HostAgentServiceStub(channel)


async def until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.05)


async def rpc_error(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    return err.value


# ---------------------------------------------------------------- facts


async def test_facts_are_real_and_registered(env):
    agent = await env.start("h1")
    facts = await stub(agent).GetHostFacts(pb.GetHostFactsRequest())
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next(ln for ln in cpuinfo if ln.startswith("model name")).split(":", 1)[1].strip()
    assert facts.cpu_model == model
    codes = [ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("microcode")]
    assert facts.cpu_microcode == (codes[0] if codes else "")
    assert facts.kernel_version == os.uname().release
    assert facts.cpu_count == len(os.sched_getaffinity(0))
    meminfo = Path("/proc/meminfo").read_text().split()
    assert facts.mem_size_mb == int(meminfo[meminfo.index("MemTotal:") + 1]) // 1024
    assert facts.accelerator == pb.ACCELERATOR_TCG
    assert facts.access_address == f"{LISTEN_HOST}:{agent.port}"
    assert facts.host_id == "h1" and facts.name == "h1-name"
    assert facts.wire == "wire7" and list(facts.networks) == ["net0", "net1"]
    assert [(s.id, s.kind) for s in facts.storages] == [
        ("h1-local", pb.STORAGE_KIND_LOCAL), ("shared0", pb.STORAGE_KIND_SHARED)]
    st = os.statvfs(env.shared)
    assert facts.storages[1].capacity_mb == st.f_blocks * st.f_frsize // 2**20
    assert 0 < facts.storages[1].free_mb <= facts.storages[1].capacity_mb
    # Registered with the region at start, then again every refresh interval (1 s here).
    await until(lambda: len([r for r in env.region.registrations if r.host_id == "h1"]) >= 2,
                10, "two registrations")
    reg = env.region.registrations[0]
    assert reg.cpu_model == model and reg.access_address == facts.access_address
    assert reg.kernel_version == facts.kernel_version and reg.accelerator == pb.ACCELERATOR_TCG
    assert [s.storage_id for s in reg.storages] == ["h1-local", "shared0"]


# ---------------------------------------------------------------- a guest's life


async def test_prepare_start_serial_stop_delete(env):
    agent = await env.start("h1")
    api = stub(agent)
    spec = env.spec("g1", shared_data=True, nics=1)
    prepared = (await api.PrepareGuest(pb.PrepareGuestRequest(
        spec=spec, region_address=env.region.address))).guest
    assert prepared.state == pb.GUEST_STATE_STOPPED and prepared.pid == 0
    sys_disk, data_disk = (Path(d.path) for d in prepared.disks)
    assert sys_disk == env.local_dir("h1").absolute() / "disks" / "g1-sys.qcow2"
    assert data_disk == env.shared.absolute() / "disks" / "g1-data.qcow2"
    assert (env.local_dir("h1") / "imagecache" / "testguest").read_bytes() == env.image
    assert sys_disk.exists() and data_disk.exists()
    # Idempotent: the same spec again keeps the disks (same inode) and downloads nothing.
    inode = sys_disk.stat().st_ino
    again = (await api.PrepareGuest(pb.PrepareGuestRequest(
        spec=spec, region_address=env.region.address))).guest
    assert again == prepared and sys_disk.stat().st_ino == inode
    assert env.region.downloads == ["testguest"]

    # A guest the health keeper fenced earlier, started again by the region: the fence ends.
    fence = Path(agent.config.state_dir) / "guests" / "g1" / "fenced.json"
    fence.write_text("{}")
    started = (await api.StartGuest(pb.StartGuestRequest(guest_id="g1"))).guest
    assert started.state == pb.GUEST_STATE_RUNNING and started.pid > 0
    assert not fence.exists(), "the fence record outlived the region's start"
    assert started.accelerator == pb.ACCELERATOR_TCG
    cmdline = Path(f"/proc/{started.pid}/cmdline").read_bytes().split(b"\0")
    assert b"user,id=net0,restrict=on" in cmdline  # no packet leaves the machine
    assert any(b"mac=52:54:00:00:00:01" in a for a in cmdline)
    again = (await api.StartGuest(pb.StartGuestRequest(guest_id="g1"))).guest
    assert again.pid == started.pid  # idempotent

    log = env.serial("h1", "g1")
    await log.wait_for(log.beats_after(3), 30, "3 heartbeats")
    tail = await api.ReadSerialLog(pb.ReadSerialLogRequest(guest_id="g1", tail_lines=2))
    assert len(tail.lines) == 2 and all(ln.startswith("FERRY-HB ") for ln in tail.lines)
    full = await api.ReadSerialLog(pb.ReadSerialLogRequest(guest_id="g1"))
    assert "FERRY-BOOT" in full.lines

    # Follow from the tail's offset: new heartbeats, no gap, no repeat.
    prev, last = (int(ln.split()[1]) for ln in tail.lines)
    step = last - prev  # the counter counts passes; a line every hb_every passes
    seen: list[int] = []
    call = api.WatchSerialLog(pb.WatchSerialLogRequest(guest_id="g1", offset=tail.next_offset))
    async for msg in call:
        assert msg.next_offset > tail.next_offset
        seen += [int(ln.split()[1]) for ln in msg.lines if ln.startswith("FERRY-HB ")]
        if len(seen) >= 3:
            break
    call.cancel()
    assert seen[:3] == [last + step, last + 2 * step, last + 3 * step]

    listed = (await api.ListGuests(pb.ListGuestsRequest())).guests
    assert [(g.guest_id, g.state) for g in listed] == [("g1", pb.GUEST_STATE_RUNNING)]

    stopped = (await api.StopGuest(pb.StopGuestRequest(guest_id="g1", timeout_seconds=5))).guest
    assert stopped.state == pb.GUEST_STATE_STOPPED and stopped.pid == 0
    assert not Path(f"/proc/{started.pid}").exists()
    again = (await api.StopGuest(pb.StopGuestRequest(guest_id="g1"))).guest
    assert again.state == pb.GUEST_STATE_STOPPED  # idempotent

    # Start again (force-stop this time): the serial log goes on with a second boot.
    await api.StartGuest(pb.StartGuestRequest(guest_id="g1"))
    await log.wait_for(lambda: log.boots() == 2, 30, "the second boot")
    await api.StopGuest(pb.StopGuestRequest(guest_id="g1", force=True))

    await api.DeleteGuest(pb.DeleteGuestRequest(guest_id="g1"))
    assert not sys_disk.exists()
    assert data_disk.exists()  # shared disks are kept unless asked
    assert not (env.state_dir("h1") / "guests" / "g1").exists()
    err = await rpc_error(api.GetGuest(pb.GetGuestRequest(guest_id="g1")))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    await api.DeleteGuest(pb.DeleteGuestRequest(guest_id="g1"))  # unknown: fine

    # delete_shared_disks removes the shared ones too, and a running guest is stopped first.
    await api.PrepareGuest(pb.PrepareGuestRequest(spec=env.spec("g2", shared_data=True),
                                                  region_address=env.region.address))
    g2 = (await api.StartGuest(pb.StartGuestRequest(guest_id="g2"))).guest
    await api.DeleteGuest(pb.DeleteGuestRequest(guest_id="g2", delete_shared_disks=True))
    assert not (env.shared / "disks" / "g2-data.qcow2").exists()
    assert not Path(f"/proc/{g2.pid}").exists()


async def test_bad_requests_get_canonical_codes_and_leave_nothing(env):
    agent = await env.start("h1")
    api = stub(agent)

    async def prepare(spec, region=env.region.address):
        return await rpc_error(api.PrepareGuest(pb.PrepareGuestRequest(spec=spec,
                                                                       region_address=region)))

    bad_mem = env.spec("b1")
    bad_mem.memory_mb = -1
    err = await prepare(bad_mem)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(err).metadata["field"] == "spec.memory_mb"

    bad_storage = env.spec("b2")
    bad_storage.disks[0].storage_id = "nowhere"
    err = await prepare(bad_storage)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(err).metadata["field"] == "spec.disks[0].storage_id"

    err = await rpc_error(api.PrepareGuest(pb.PrepareGuestRequest()))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "spec" in err.details()

    corrupt = env.spec("b3")
    corrupt.disks[0].image_id = "corrupt"
    err = await prepare(corrupt)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(err).reason == "IMAGE_CHECKSUM_MISMATCH"

    missing = env.spec("b4")
    missing.disks[0].image_id = "no-such-image"
    err = await prepare(missing)
    assert err.code() == grpc.StatusCode.NOT_FOUND

    err = await prepare(env.spec("b5"), region="127.0.0.1:1")
    assert err.code() == grpc.StatusCode.UNAVAILABLE

    too_small = env.spec("b6")
    too_small.disks[0].size_mb = 0
    err = await prepare(too_small)
    assert error_info(err).metadata["field"] == "spec.disks[0].size_mb"

    for call in (api.StartGuest(pb.StartGuestRequest(guest_id="nope")),
                 api.StopGuest(pb.StopGuestRequest(guest_id="nope")),
                 api.GetGuest(pb.GetGuestRequest(guest_id="nope")),
                 api.ReadSerialLog(pb.ReadSerialLogRequest(guest_id="nope"))):
        assert (await rpc_error(call)).code() == grpc.StatusCode.NOT_FOUND
    for call in (api.StartGuest(pb.StartGuestRequest(guest_id="")),
                 api.DeleteGuest(pb.DeleteGuestRequest(guest_id="../../etc")),
                 api.ReadSerialLog(pb.ReadSerialLogRequest(guest_id="x", tail_lines=-1)),
                 api.StopGuest(pb.StopGuestRequest(guest_id="x", timeout_seconds=-3))):
        assert (await rpc_error(call)).code() == grpc.StatusCode.INVALID_ARGUMENT

    # Nothing was left behind by any failed prepare.
    assert (await api.ListGuests(pb.ListGuestsRequest())).guests == []
    assert list((env.local_dir("h1") / "disks").iterdir()) == []
    assert not any(p.is_dir() for p in (env.state_dir("h1") / "guests").iterdir())
    cache = env.local_dir("h1") / "imagecache"
    assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


async def test_watch_serial_log_cleans_up_when_the_client_goes(env):
    agent = await env.start("h1")
    api = stub(agent)
    await api.PrepareGuest(pb.PrepareGuestRequest(spec=env.spec("w1"),
                                                  region_address=env.region.address))
    await api.StartGuest(pb.StartGuestRequest(guest_id="w1"))
    log_path = env.serial("h1", "w1").path

    def open_fds() -> int:
        n = 0
        for fd in Path("/proc/self/fd").iterdir():
            try:
                n += os.readlink(fd) == str(log_path)
            except OSError:
                pass
        return n

    call = api.WatchSerialLog(pb.WatchSerialLogRequest(guest_id="w1", offset=0))
    first = await call.read()
    assert "FERRY-BOOT" in first.lines or first.lines
    assert open_fds() == 1
    call.cancel()
    await until(lambda: open_fds() == 0, 5, "the server to close the log")

    # Deleting the guest ends a follower's stream.
    call = api.WatchSerialLog(pb.WatchSerialLogRequest(guest_id="w1", offset=-1))
    await until(lambda: open_fds() == 1, 5, "the follower to open the log")
    await api.DeleteGuest(pb.DeleteGuestRequest(guest_id="w1"))

    async def drain():
        async for _ in call:
            pass
    await asyncio.wait_for(drain(), 5)
    assert open_fds() == 0


# ---------------------------------------------------------------- restart, lease


async def test_agent_restart_adopts_running_guest_and_keeps_the_lease(env, etcd_server):
    etcd = aetcd.Client(host=etcd_server.host, port=etcd_server.port, timeout=2)
    key = health_key("h2").encode()
    try:
        first = await env.start("h2")
        api = stub(first)
        await api.PrepareGuest(pb.PrepareGuestRequest(spec=env.spec("a1", "h2"),
                                                      region_address=env.region.address))
        pid = (await api.StartGuest(pb.StartGuestRequest(guest_id="a1"))).guest.pid
        log = env.serial("h2", "a1")
        await log.wait_for(log.beats_after(2), 30, "heartbeats")
        await until(lambda: etcd.get(key), 10, "the health key")

        await first.stop()
        assert await etcd.get(key) is None  # revoked at once on clean shutdown
        assert Path(f"/proc/{pid}").exists()  # the guest outlives its agent
        before = log.last_heartbeat()
        await log.wait_for(log.beats_after(2, before), 10, "heartbeats with no agent")

        env.region.registrations.clear()
        second = await env.start("h2")
        assert second.adopted == ["a1"]
        api = stub(second)
        got = (await api.GetGuest(pb.GetGuestRequest(guest_id="a1"))).guest
        assert got.state == pb.GUEST_STATE_RUNNING and got.pid == pid
        assert got.run_state == "running" and got.accelerator == pb.ACCELERATOR_TCG
        mark = log.last_heartbeat()
        await log.wait_for(log.beats_after(3, mark), 10, "heartbeats after adoption")
        assert log.boots() == 1  # the same run: no new FERRY-BOOT
        await until(lambda: etcd.get(key), 10, "the health key from the new agent")
        await until(lambda: env.region.registrations, 10, "a registration")
        reg = env.region.registrations[0]
        assert [(g.server_id, g.running, g.run_state) for g in reg.guests] == [
            ("a1", True, "running")]

        # etcd restarts without its data (every lease gone): the key comes back.
        await asyncio.to_thread(etcd_server.restart, wipe=True)
        await etcd.close()
        etcd = aetcd.Client(host=etcd_server.host, port=etcd_server.port, timeout=2)

        async def key_back():
            try:
                return await etcd.get(key)
            except aetcd.ClientError:
                return None
        await until(key_back, 15, "the health key after the etcd restart")

        await api.StopGuest(pb.StopGuestRequest(guest_id="a1", timeout_seconds=5))
        assert not Path(f"/proc/{pid}").exists()
    finally:
        await etcd.close()


async def test_region_down_at_start_is_retried(env):
    await env.region.stop()
    port = env.region.port
    agent = await env.start("h3")
    assert agent.registrar is not None
    await until(lambda: agent.registrar.last_error is not None, 5, "a failed registration")
    assert agent.registrar.registrations == 0
    await env.region.start(port)
    await agent.registrar.wait_registered(15)
    assert env.region.registrations[-1].host_id == "h3"
