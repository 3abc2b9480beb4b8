"""The SDK against a fake region: requests built, paging, uploads, waiting, typed errors."""

from __future__ import annotations

import hashlib
import os

import grpc
import pytest
from ferry_common.errors import InvalidArgument, NotFound, ResourceExhausted

from ferry_client import (
    ClientError,
    FerryClient,
    InvalidArgument as ClientInvalidArgument,
    NotFound as ClientNotFound,
    RegionUnreachable,
    ResourceExhausted as ClientResourceExhausted,
    TaskFailed,
    WaitTimeout,
)
from ferry_client.enums import enum_choices, enum_from_str, enum_to_str
from ferry_client.images import CHUNK_SIZE, upload_requests
from ferry_client.units import format_mb, parse_size_mb
from ferry_proto.region.v1 import resources_pb2 as r, server_service_pb2 as spb
from ferry_proto.scheduler.v1 import scheduler_pb2

from .fake_region import FakeRegion, create_script


def test_address_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FERRY_REGION", raising=False)
    with FerryClient() as c:
        assert c.address == "127.0.0.1:7700"
    monkeypatch.setenv("FERRY_REGION", "127.0.0.9:7777")
    with FerryClient() as c:
        assert c.address == "127.0.0.9:7777"
    with FerryClient("127.0.0.8:1") as c:
        assert c.address == "127.0.0.8:1"
        assert c.server_stub is not None and c.task_stub is not None  # raw stubs exposed


def test_enum_strings() -> None:
    assert enum_to_str(r.ServerStatus, r.SERVER_STATUS_LIVE_MIGRATING) == "live_migrating"
    assert enum_to_str(r.TaskKind, r.TASK_KIND_SERVER_CREATE) == "server_create"
    assert enum_to_str(r.HostHealth, r.HOST_HEALTH_OFFLINE) == "offline"
    assert enum_to_str(r.ServerStatus, 0) == ""
    assert enum_to_str(r.ServerStatus, 999) == "999"
    assert enum_from_str(r.ServerStatus, "live_migrating") == r.SERVER_STATUS_LIVE_MIGRATING
    assert enum_from_str(r.ServerStatus, "SERVER_STATUS_READY") == r.SERVER_STATUS_READY
    assert enum_from_str(spb.ListScope, "system") == spb.LIST_SCOPE_SYSTEM
    assert "rolling_back" in enum_choices(r.TaskState)
    with pytest.raises(ValueError, match="live_migrating"):
        enum_from_str(r.ServerStatus, "flying")


def test_sizes() -> None:
    assert parse_size_mb("512M") == 512
    assert parse_size_mb("2G") == 2048
    assert parse_size_mb("1.5g") == 1536
    assert parse_size_mb("100") == 100
    assert parse_size_mb("1T") == 1024 * 1024
    for bad in ("", "0", "12X", "-1G", "0.1M"):
        with pytest.raises(ValueError):
            parse_size_mb(bad)
    assert format_mb(2048) == "2G" and format_mb(1536) == "1536M"


def test_create_request(client: FerryClient, fake: FakeRegion) -> None:
    resp = client.servers.create("vm1", "img", vcpu_count=2, memory_mb=512, disk_size_mb=2048,
                                 storage="shared", data_disks=[(1024, "local"), 512],
                                 networks=["net0"], prefer_host="h1", auto_start=True, project="p")
    assert resp.task_id and resp.server.name == "vm1"
    req = fake.requests["CreateServer"][0]
    assert req.system_disk == spb.DiskRequest(size_mb=2048, storage="shared")
    assert list(req.data_disks) == [spb.DiskRequest(size_mb=1024, storage="local"),
                                    spb.DiskRequest(size_mb=512, storage="shared")]
    assert (req.vcpu_count, req.memory_mb, list(req.networks), req.prefer_host, req.auto_start,
            req.project) == (2, 512, ["net0"], "h1", True, "p")


def test_paging_iterator(client: FerryClient, fake: FakeRegion) -> None:
    for i in range(250):
        fake.add_server(f"vm{i:03d}", status=r.SERVER_STATUS_RUNNING)
    names = [s.name for s in client.servers.iter(page_size=100, status="running", scope="system")]
    assert names == [f"vm{i:03d}" for i in range(250)]
    tokens = [q.page_token for q in fake.requests["ListServers"]]
    assert tokens == ["", "100", "200"]
    q = fake.requests["ListServers"][0]
    assert q.page_size == 100 and q.status == r.SERVER_STATUS_RUNNING and q.scope == spb.LIST_SCOPE_SYSTEM
    page = client.servers.list(page_size=10, search="vm00")
    assert len(page.servers) == 10 and page.total_size == 10 and page.next_page_token == ""


def test_image_upload_stream(client: FerryClient, fake: FakeRegion, tmp_path) -> None:
    data = b"QFI\xfb" + os.urandom(2 * CHUNK_SIZE + 12345)
    path = tmp_path / "disk.img"
    path.write_bytes(data)
    image = client.images.create("img1", path, min_memory_mb=64)
    assert image.name == "img1" and image.size_bytes == len(data)
    msgs = fake.uploads[-1]
    assert msgs[0].WhichOneof("part") == "metadata"
    assert msgs[0].metadata.format == r.DISK_FORMAT_QCOW2 and msgs[0].metadata.min_memory_mb == 64
    chunks = [m.chunk for m in msgs[1:]]
    assert all(m.WhichOneof("part") == "chunk" for m in msgs[1:])
    assert all(0 < len(c) <= CHUNK_SIZE for c in chunks) and len(chunks) == 3
    assert hashlib.sha256(b"".join(chunks)).digest() == hashlib.sha256(data).digest()


def test_upload_requests_raw_and_errors(tmp_path) -> None:
    path = tmp_path / "raw.img"
    path.write_bytes(b"\0" * 10)
    msgs = list(upload_requests("x", path))
    assert msgs[0].metadata.format == r.DISK_FORMAT_RAW and msgs[1].chunk == b"\0" * 10
    empty = tmp_path / "empty.img"
    empty.write_bytes(b"")
    assert len(list(upload_requests("x", empty))) == 1
    with pytest.raises(FileNotFoundError):
        upload_requests("x", tmp_path / "missing")
    with pytest.raises(ValueError):
        upload_requests("x", path, format="vmdk")


def test_wait_task_watch(client: FerryClient, fake: FakeRegion) -> None:
    fake.tasks["t1"] = create_script("t1", "srv-1")
    seen: list[str] = []
    task = client.wait_task("t1", timeout=5, on_update=lambda t: seen.append(t.stage))
    assert task.state == r.TASK_STATE_SUCCEEDED
    assert seen == ["schedule", "prepare_disks", "done"]
    assert "GetTask" not in fake.requests


@pytest.mark.parametrize("mode", ["unimplemented", "break"])
def test_wait_task_falls_back_to_polling(client: FerryClient, fake: FakeRegion, mode: str) -> None:
    fake.watch_mode = mode
    fake.tasks["t2"] = create_script("t2", "srv-1")
    seen: list[str] = []
    task = client.wait_task("t2", timeout=5, poll_interval=0.01, on_update=lambda t: seen.append(t.stage))
    assert task.state == r.TASK_STATE_SUCCEEDED
    assert seen == ["schedule", "prepare_disks", "done"]
    assert len(fake.requests["GetTask"]) >= 3


def test_wait_task_failed(client: FerryClient, fake: FakeRegion) -> None:
    fake.tasks["t3"] = create_script("t3", "srv-1", fail=True)
    with pytest.raises(TaskFailed) as info:
        client.wait_task("t3", timeout=5)
    err = info.value
    assert isinstance(err, ClientError)
    assert err.stage == "prepare_disks" and err.reason == "DISK_PREPARE_FAILED"
    assert "disk image copy failed on host1" in str(err) and err.task.state == r.TASK_STATE_FAILED


def test_wait_task_timeout(client: FerryClient, fake: FakeRegion) -> None:
    fake.watch_mode = "stall"
    fake.tasks["t4"] = create_script("t4", "srv-1")
    with pytest.raises(WaitTimeout) as info:
        client.wait_task("t4", timeout=0.3)
    assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert info.value.task is not None and info.value.task.stage == "schedule"
    assert "schedule" in str(info.value)


def test_typed_errors(client: FerryClient, fake: FakeRegion) -> None:
    with pytest.raises(ClientNotFound) as nf:
        client.servers.get("nope")
    e = nf.value
    assert e.code == grpc.StatusCode.NOT_FOUND and e.reason == "SERVER_NOT_FOUND"
    assert e.metadata == {"resource": "server", "id": "nope"}
    assert isinstance(e.__cause__, grpc.RpcError)

    fake.fail("CreateServer", InvalidArgument("memory_mb", "must be 16-1048576, got -1"))
    with pytest.raises(ClientInvalidArgument) as ia:
        client.servers.create("vm", "img", memory_mb=-1)
    assert ia.value.field == "memory_mb" and ia.value.reason == "INVALID_ARGUMENT"

    err = ResourceExhausted("no host can take server vm")
    err.details.append(scheduler_pb2.SelectHostResponse(rejected=[
        scheduler_pb2.RejectedHost(host_id="h1", host_name="host1", rejections=[
            scheduler_pb2.Rejection(filter="memory", reason="INSUFFICIENT_MEMORY",
                                    message="needs 4096 MiB, 1024 MiB free")])]))
    fake.fail("CreateServer", err)
    with pytest.raises(ClientResourceExhausted) as re_:
        client.servers.create("vm", "img")
    [host] = re_.value.rejections
    assert (host.host_id, host.host_name) == ("h1", "host1")
    assert host.rejections[0].reason == "INSUFFICIENT_MEMORY"


def test_unreachable(closed_address: str) -> None:
    with FerryClient(closed_address, timeout=5) as c:
        with pytest.raises(RegionUnreachable) as info:
            c.hosts.list()
    assert closed_address in str(info.value) and info.value.code == grpc.StatusCode.UNAVAILABLE


def test_follow_serial_log(client: FerryClient, fake: FakeRegion) -> None:
    fake.add_server("vm1", id="srv-9")
    fake.serial_lines = ["a", "b", "c"]
    fake.serial_follow = [["d"], ["e", "f"]]
    assert client.servers.serial_log("vm1", 2) == ["b", "c"]
    assert list(client.servers.follow_serial_log("vm1", tail_lines=1)) == ["c", "d", "e", "f"]


def test_follow_closes_stream(client: FerryClient, fake: FakeRegion) -> None:
    fake.add_server("vm1")
    fake.serial_lines = ["x"]
    fake.serial_stall = True
    it = client.servers.follow_serial_log("vm1", tail_lines=1)
    assert next(it) == "x"
    it.close()  # cancels the call; the fake's handler sees the client go away
    assert fake.requests["WatchServerSerialLog"]


def test_hosts_tasks_images(client: FerryClient, fake: FakeRegion) -> None:
    fake.hosts = [r.Host(id="h1", name="host1", hypervisor="kvm"), r.Host(id="h2", name="host2", hypervisor="xen")]
    assert [h.id for h in client.hosts.list(hypervisor="kvm")] == ["h1"]
    assert client.hosts.get("host2").id == "h2"
    fake.tasks["t1"] = create_script("t1", "srv-1")
    assert client.tasks.get("t1").state == r.TASK_STATE_SUCCEEDED
    assert [t.id for t in client.tasks.list(state="succeeded", limit=5, server="vm1")] == ["t1"]
    q = fake.requests["ListTasks"][0]
    assert (q.state, q.limit, q.server) == (r.TASK_STATE_SUCCEEDED, 5, "vm1")
    fake.images["i1"] = r.Image(id="i1", name="cirros")
    assert client.images.get("cirros").id == "i1"
    assert [i.id for i in client.images.list(search="cir")] == ["i1"]
    assert client.images.delete("i1").name == "cirros" and not fake.images
