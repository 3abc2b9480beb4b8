"""Bad input, table-driven: each bad field gets its canonical code with the field
(or resource) named in the ErrorInfo metadata, and the database does not change."""

from __future__ import annotations

import grpc
import pytest

from ferry_common.errors import error_info
from ferry_proto.region.v1 import host_service_pb2 as hpb
from ferry_proto.region.v1 import image_service_pb2 as ipb
from ferry_proto.region.v1 import resources_pb2 as r
from ferry_proto.region.v1 import server_service_pb2 as spb
from ferry_proto.region.v1 import task_service_pb2 as tpb

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
EXISTS = grpc.StatusCode.ALREADY_EXISTS


def create(**kw):
    base = dict(name="ok", image="boot", vcpu_count=1, memory_mb=64)
    base.update(kw)
    return spb.CreateServerRequest(**base)


CREATE_CASES = [
    (create(name=""), INVALID, "name"),
    (create(name="bad name!"), INVALID, "name"),
    (create(name="-leading-dash"), INVALID, "name"),
    (create(name="x" * 65), INVALID, "name"),
    (create(image=""), INVALID, "image"),
    (create(image="i" * 200), INVALID, "image"),
    (create(vcpu_count=0), INVALID, "vcpu_count"),
    (create(vcpu_count=65), INVALID, "vcpu_count"),
    (create(vcpu_count=-3), INVALID, "vcpu_count"),
    (create(memory_mb=15), INVALID, "memory_mb"),
    (create(memory_mb=-64), INVALID, "memory_mb"),
    (create(memory_mb=2 ** 40), INVALID, "memory_mb"),
    (create(system_disk=spb.DiskRequest(size_mb=-1)), INVALID, "system_disk.size_mb"),
    (create(system_disk=spb.DiskRequest(storage="\x00bad")), INVALID, "system_disk.storage"),
    (create(data_disks=[spb.DiskRequest(size_mb=0)]), INVALID, "data_disks[0].size_mb"),
    (create(data_disks=[spb.DiskRequest(size_mb=10), spb.DiskRequest(size_mb=-10)]), INVALID,
     "data_disks[1].size_mb"),
    (create(data_disks=[spb.DiskRequest(size_mb=1)] * 17), INVALID, "data_disks"),
    (create(networks=[""]), INVALID, "networks[0]"),
    (create(networks=["net0", "bad net"]), INVALID, "networks[1]"),
    (create(project="bad project"), INVALID, "project"),
    (create(prefer_host="h" * 200), INVALID, "prefer_host"),
    (create(image="no-such-image"), NOT_FOUND, "image"),
    (create(prefer_host="no-such-host"), NOT_FOUND, "host"),
    (create(networks=["no-such-net"]), NOT_FOUND, "network"),
    (create(system_disk=spb.DiskRequest(storage="no-such-storage")), NOT_FOUND, "storage"),
    (create(name="taken"), EXISTS, "server"),
]


def check(exc: grpc.aio.AioRpcError, code: grpc.StatusCode, field: str) -> None:
    assert exc.code() == code, (exc.code(), exc.details())
    info = error_info(exc)
    assert info is not None, "rich status with ErrorInfo expected"
    if code == INVALID:
        assert info.metadata["field"] == field, (dict(info.metadata), exc.details())
        assert field in exc.details()
    else:
        assert info.metadata["resource"] == field, dict(info.metadata)


@pytest.fixture
async def venv(env):
    resp = await env.servers.CreateServer(create(name="taken"))
    await env.wait_task(resp.task_id)
    return env


async def test_create_server_bad_input(venv):
    before = venv.counts()
    for req, code, field in CREATE_CASES:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await venv.servers.CreateServer(req)
        check(exc.value, code, field)
        assert venv.counts() == before, f"database changed for {field}"


LIST_CASES = [
    (spb.ListServersRequest(page_size=-1), INVALID, "page_size"),
    (spb.ListServersRequest(page_size=1001), INVALID, "page_size"),
    (spb.ListServersRequest(page_token="garbage!!"), INVALID, "page_token"),
    (spb.ListServersRequest(page_token="eyJrIjogMX0"), INVALID, "page_token"),  # {"k": 1}
    (spb.ListServersRequest(page_token="A" * 5000), INVALID, "page_token"),
    (spb.ListServersRequest(status=999), INVALID, "status"),
    (spb.ListServersRequest(scope=7), INVALID, "scope"),
    (spb.ListServersRequest(search="s" * 200), INVALID, "search"),
    (spb.ListServersRequest(project="bad project"), INVALID, "project"),
    (spb.ListServersRequest(host="no-such-host"), NOT_FOUND, "host"),
]


async def test_list_servers_bad_input(venv):
    for req, code, field in LIST_CASES:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await venv.servers.ListServers(req)
        check(exc.value, code, field)


async def test_by_id_calls_bad_input(venv):
    s = venv.servers
    cases = [
        (s.GetServer, spb.GetServerRequest(id=""), INVALID, "id"),
        (s.GetServer, spb.GetServerRequest(id="x" * 129), INVALID, "id"),
        (s.GetServer, spb.GetServerRequest(id="ghost"), NOT_FOUND, "server"),
        (s.StartServer, spb.StartServerRequest(id=""), INVALID, "id"),
        (s.StartServer, spb.StartServerRequest(id="ghost"), NOT_FOUND, "server"),
        (s.StopServer, spb.StopServerRequest(id="ghost"), NOT_FOUND, "server"),
        (s.DeleteServer, spb.DeleteServerRequest(id=""), INVALID, "id"),
        (s.DeleteServer, spb.DeleteServerRequest(id="ghost"), NOT_FOUND, "server"),
        (s.GetServerSerialLog, spb.GetServerSerialLogRequest(id="taken", tail_lines=-1), INVALID,
         "tail_lines"),
        (s.GetServerSerialLog, spb.GetServerSerialLogRequest(id="taken", tail_lines=10001),
         INVALID, "tail_lines"),
        (s.GetServerSerialLog, spb.GetServerSerialLogRequest(id="ghost"), NOT_FOUND, "server"),
        (venv.tasks.ListTasks, tpb.ListTasksRequest(limit=-1), INVALID, "limit"),
        (venv.tasks.ListTasks, tpb.ListTasksRequest(limit=1001), INVALID, "limit"),
        (venv.tasks.ListTasks, tpb.ListTasksRequest(state=42), INVALID, "state"),
        (venv.tasks.ListTasks, tpb.ListTasksRequest(server="ghost"), NOT_FOUND, "server"),
        (venv.tasks.GetTask, tpb.GetTaskRequest(id=""), INVALID, "id"),
        (venv.tasks.GetTask, tpb.GetTaskRequest(id="ghost"), NOT_FOUND, "task"),
        (venv.hosts.GetHost, hpb.GetHostRequest(id=""), INVALID, "id"),
        (venv.hosts.GetHost, hpb.GetHostRequest(id="ghost"), NOT_FOUND, "host"),
        (venv.hosts.ListHosts, hpb.ListHostsRequest(search="s" * 200), INVALID, "search"),
        (venv.hosts.ListHosts, hpb.ListHostsRequest(hypervisor="h" * 40), INVALID,
         "hypervisor"),
        (venv.images.GetImage, ipb.GetImageRequest(id=""), INVALID, "id"),
        (venv.images.GetImage, ipb.GetImageRequest(id="ghost"), NOT_FOUND, "image"),
        (venv.images.DeleteImage, ipb.DeleteImageRequest(id="ghost"), NOT_FOUND, "image"),
        (venv.images.ListImages, ipb.ListImagesRequest(search="s" * 200), INVALID, "search"),
    ]
    before = venv.counts()
    for call, req, code, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await call(req)
        check(exc.value, code, field)
    assert venv.counts() == before


async def test_download_of_unknown_image_is_not_found(venv):
    call = venv.images.DownloadImage(ipb.DownloadImageRequest(id="ghost"))
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        async for _ in call:
            pass
    check(exc.value, NOT_FOUND, "image")


def registration(env, **kw):
    req = env.register_request("hx", "127.0.0.1:9")
    for k, v in kw.items():
        if k == "storage_kind":
            req.storages[0].kind = v
        elif k == "storage_id":
            req.storages[0].storage_id = v
        else:
            setattr(req, k, v)
    return req


async def test_register_host_bad_input(venv):
    cases = [
        (dict(host_id=""), INVALID, "host_id"),
        (dict(host_id="h" * 129), INVALID, "host_id"),
        (dict(name=""), INVALID, "name"),
        (dict(name="bad name"), INVALID, "name"),
        (dict(access_address="no-port"), INVALID, "access_address"),
        (dict(access_address=""), INVALID, "access_address"),
        (dict(cpu_count=-1), INVALID, "cpu_count"),
        (dict(mem_size_mb=-1), INVALID, "mem_size_mb"),
        (dict(accelerator=9), INVALID, "accelerator"),
        (dict(storage_kind=0), INVALID, "storages[0].kind"),
        (dict(storage_kind=5), INVALID, "storages[0].kind"),
        (dict(storage_id=""), INVALID, "storages[0].storage_id"),
        (dict(storage_id="shared0"), INVALID, "storages[1].storage_id"),  # duplicate
        (dict(name="name-h1"), EXISTS, "host"),  # another host's name
    ]
    before = venv.counts()
    for kw, code, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await venv.registry.RegisterHost(registration(venv, **kw))
        check(exc.value, code, field)
    assert venv.counts() == before


async def test_create_image_bad_input(venv):
    async def upload(*msgs):
        async def gen():
            for m in msgs:
                yield m
        return await venv.images.CreateImage(gen())

    meta = ipb.ImageMetadata
    req = ipb.CreateImageRequest
    cases = [
        ((), INVALID, "metadata"),
        ((req(chunk=b"x"),), INVALID, "metadata"),
        ((req(metadata=meta(name="", format=r.DISK_FORMAT_RAW)),), INVALID, "metadata.name"),
        ((req(metadata=meta(name="a b", format=r.DISK_FORMAT_RAW)),), INVALID, "metadata.name"),
        ((req(metadata=meta(name="f0")),), INVALID, "metadata.format"),
        ((req(metadata=meta(name="f9", format=9)),), INVALID, "metadata.format"),
        ((req(metadata=meta(name="m", format=r.DISK_FORMAT_RAW, min_memory_mb=-1)),), INVALID,
         "metadata.min_memory_mb"),
        ((req(metadata=meta(name="two", format=r.DISK_FORMAT_RAW)),
          req(metadata=meta(name="two", format=r.DISK_FORMAT_RAW))), INVALID, "metadata"),
        ((req(metadata=meta(name="big", format=r.DISK_FORMAT_RAW)),
          req(chunk=b"\x00" * (1024 * 1024 + 1))), INVALID, "chunk"),
        ((req(metadata=meta(name="boot", format=r.DISK_FORMAT_RAW)),), EXISTS, "image"),
    ]
    before = venv.counts()
    for msgs, code, field in cases:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await upload(*msgs)
        check(exc.value, code, field)
    assert venv.counts() == before
    leftovers = [p for p in venv.region.config.images_dir.iterdir() if p.name.startswith(".")]
    assert leftovers == []
