"""climc run in-process through main(argv) against the fake region."""

from __future__ import annotations

import json
import os

import pytest
from ferry_common.errors import Aborted, InvalidArgument, ResourceExhausted

from ferry_client.images import CHUNK_SIZE
from ferry_proto.region.v1 import resources_pb2 as r, server_service_pb2 as spb
from ferry_proto.scheduler.v1 import scheduler_pb2

from .conftest import Run
from .fake_region import FakeRegion, create_script


def sample_server(fake: FakeRegion) -> r.Server:
    return fake.add_server(
        "vm1", id="srv-1", status=r.SERVER_STATUS_LIVE_MIGRATING, host_id="h1", host_name="host1",
        vcpu_count=2, memory_mb=512, project="default",
        disks=[r.Disk(id="d0", index=0, storage_id="shared0", storage_kind=r.STORAGE_KIND_SHARED,
                      size_mb=2048, format=r.DISK_FORMAT_QCOW2, path="/s/disks/d0.qcow2"),
               r.Disk(id="d1", index=1, storage_id="h1-local", storage_kind=r.STORAGE_KIND_LOCAL,
                      size_mb=1024, format=r.DISK_FORMAT_QCOW2)],
        networks=[r.ServerNetwork(network="net0", mac="52:54:00:00:00:01", index=0)],
        task_id="t-live", progress=r.MigrationProgress(phase="memory", percent=42.0, iteration=3,
                                                           eta_seconds=7))


# -- servers --------------------------------------------------------------------

def test_server_create_builds_request(climc: Run, fake: FakeRegion) -> None:
    rc, out, err = climc("server-create", "--image", "cirros", "--ncpu", "2", "--mem", "1G",
                         "--disk", "2G", "--data-disk", "512M", "--data-disk", "1G:shared",
                         "--storage", "local", "--net", "net0", "--net", "net1",
                         "--prefer-host", "host1", "--auto-start", "--project", "p1", "vm1")
    assert rc == 0, err
    req = fake.requests["CreateServer"][0]
    assert req == spb.CreateServerRequest(
        name="vm1", image="cirros", vcpu_count=2, memory_mb=1024,
        system_disk=spb.DiskRequest(size_mb=2048, storage="local"),
        data_disks=[spb.DiskRequest(size_mb=512, storage="local"),
                    spb.DiskRequest(size_mb=1024, storage="shared")],
        networks=["net0", "net1"], prefer_host="host1", auto_start=True, project="p1")
    assert "| name " in out and "vm1" in out and "task_id" in out


def test_server_create_defaults(climc: Run, fake: FakeRegion) -> None:
    rc, _, err = climc("server-create", "--image", "cirros", "vm2")
    assert rc == 0, err
    req = fake.requests["CreateServer"][0]
    assert (req.vcpu_count, req.memory_mb, req.system_disk.size_mb, req.system_disk.storage) == (1, 256, 0, "")
    assert not req.data_disks and not req.auto_start and req.prefer_host == ""


@pytest.mark.parametrize("argv", [
    ["server-create", "vm"],                                            # --image missing
    ["server-create", "--image", "i", "--disk", "12X", "vm"],
    ["server-create", "--image", "i", "--data-disk", "1G:ceph", "vm"],
    ["server-create", "--image", "i", "--storage", "nfs", "vm"],
    ["server-create", "--image", "i", "--ncpu", "0", "vm"],
    ["server-list", "--status", "flying"],
    ["server-list", "--scope", "world"],
    ["server-list", "--limit", "x"],
    ["task-list", "--state", "done"],
    ["image-create", "img"],                                            # --file missing
    ["server-show"],
    ["no-such-command"],
    [],
])
def test_usage_errors(climc: Run, fake: FakeRegion, argv: list[str]) -> None:
    rc, out, err = climc(*argv)
    assert rc == 2
    assert "Usage: climc" in err and "error:" in err and "Traceback" not in err
    assert not any(fake.requests.values())


def test_server_create_wait_success(climc: Run, fake: FakeRegion) -> None:
    rc, out, err = climc("server-create", "--image", "cirros", "--wait", "vm1")
    assert rc == 0, err
    lines = out.splitlines()
    stage_lines = [x for x in lines if x.startswith("Task ")]
    assert [x.split(": ", 1)[1] for x in stage_lines] == ["schedule", "prepare_disks", "done", "succeeded"]
    assert "(server_create)" in stage_lines[0]
    assert "| status " in out and "ready" in out       # the server as it ended up
    assert fake.requests["GetServer"]


def test_server_create_wait_failure(climc: Run, fake: FakeRegion) -> None:
    fake.fail_next_create_task = True
    rc, out, err = climc("server-create", "--image", "cirros", "--wait", "vm1")
    assert rc == 1
    assert "rolling back" in out
    assert err.startswith("climc: error: TASK_FAILED: task ")
    assert "failed at stage prepare_disks: disk image copy failed on host1 [DISK_PREPARE_FAILED]" in err
    assert len(err.strip().splitlines()) == 1


def test_wait_json_keeps_stdout_one_document(climc: Run, fake: FakeRegion) -> None:
    fake.add_server("vm1", id="srv-1", status=r.SERVER_STATUS_READY)
    rc, out, err = climc("--output", "json", "server-start", "--wait", "vm1")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["task"]["state"] == "TASK_STATE_SUCCEEDED" and doc["server"]["id"] == "srv-1"
    assert "Task " in err  # stages went to stderr


@pytest.mark.parametrize("argv,method,expect", [
    (["server-start", "vm1"], "StartServer", spb.StartServerRequest(id="vm1")),
    (["server-stop", "vm1"], "StopServer", spb.StopServerRequest(id="vm1")),
    (["server-stop", "--force", "vm1"], "StopServer", spb.StopServerRequest(id="vm1", force=True)),
    (["server-delete", "vm1"], "DeleteServer", spb.DeleteServerRequest(id="vm1")),
    (["server-show", "vm1"], "GetServer", spb.GetServerRequest(id="vm1")),
])
def test_server_actions(climc: Run, fake: FakeRegion, argv, method, expect) -> None:
    sample_server(fake)
    rc, out, err = climc(*argv)
    assert rc == 0, err
    assert fake.requests[method] == [expect]
    assert "| id " in out and "srv-1" in out


def test_server_delete_wait(climc: Run, fake: FakeRegion) -> None:
    sample_server(fake)
    rc, out, err = climc("server-delete", "--wait", "vm1")
    assert rc == 0, err
    assert "Task " in out and out.strip().endswith("Server vm1 (srv-1) deleted")
    assert "GetServer" not in fake.requests


def test_server_show_table_and_json(climc: Run, fake: FakeRegion) -> None:
    sample_server(fake)
    rc, out, _ = climc("server-show", "vm1")
    assert rc == 0
    assert "| status " in out and "live_migrating" in out
    assert "disk0 d0 2G shared shared0 qcow2 /s/disks/d0.qcow2" in out
    assert "nic0 net0 52:54:00:00:00:01" in out
    assert "memory 42.0%" in out and "iteration 3" in out
    # global option after the subcommand works too
    rc, out, _ = climc("server-show", "--output", "json", "vm1")
    doc = json.loads(out)
    assert doc["status"] == "SERVER_STATUS_LIVE_MIGRATING"
    assert doc["vcpu_count"] == 2 and doc["host_name"] == "host1"   # proto field names
    assert doc["disks"][0]["storage_kind"] == "STORAGE_KIND_SHARED"
    assert doc["status_reason"] == ""                                  # defaults printed


def test_server_list_filters_and_details(climc: Run, fake: FakeRegion) -> None:
    sample_server(fake)
    rc, out, err = climc("server-list", "--search", "vm", "--details", "--scope", "system",
                         "--project", "p", "--host", "host1", "--status", "live_migrating",
                         "--limit", "5", "--page-token", "0")
    assert rc == 0, err
    assert fake.requests["ListServers"] == [spb.ListServersRequest(
        search="vm", details=True, scope=spb.LIST_SCOPE_SYSTEM, project="p", host="host1",
        status=r.SERVER_STATUS_LIVE_MIGRATING, page_size=5, page_token="0")]
    header = out.splitlines()[1]
    for col in ("ID", "Name", "Status", "Host", "Disks", "Networks"):
        assert f" {col} " in header
    assert "live_migrating (memory 42%)" in out
    assert "0:2G:shared, 1:1G:local" in out and "net0/52:54:00:00:00:01" in out
    assert "***  Total: 1  ***" in out


def test_server_list_plain_and_paging_footer(climc: Run, fake: FakeRegion) -> None:
    for i in range(3):
        fake.add_server(f"vm{i}", status=r.SERVER_STATUS_READY)
    rc, out, _ = climc("server-list", "--limit", "2")
    assert rc == 0
    header = out.splitlines()[1]
    assert " Host " not in header and " Disks " not in header
    assert "Total: 3  Shown: 2  Next: --page-token 2" in out
    q = fake.requests["ListServers"][0]
    assert (q.details, q.scope, q.page_size) == (False, 0, 2)
    rc, out, _ = climc("--output", "json", "server-list")
    doc = json.loads(out)
    assert [s["name"] for s in doc["servers"]] == ["vm0", "vm1", "vm2"] and doc["total_size"] == 3


# -- serial log -----------------------------------------------------------------------

def test_serial_log(climc: Run, fake: FakeRegion) -> None:
    fake.add_server("vm1")
    fake.serial_lines = [f"line {i}" for i in range(200)]
    rc, out, _ = climc("server-serial-log", "vm1")
    assert rc == 0 and out.splitlines() == [f"line {i}" for i in range(100, 200)]
    assert fake.requests["GetServerSerialLog"][0] == spb.GetServerSerialLogRequest(id="vm1", tail_lines=100)
    rc, out, _ = climc("server-serial-log", "--tail", "3", "vm1")
    assert out.splitlines() == ["line 197", "line 198", "line 199"]


def test_serial_log_follow(climc: Run, fake: FakeRegion) -> None:
    fake.add_server("vm1")
    fake.serial_lines = ["boot", "hb 1"]
    fake.serial_follow = [["hb 2"], ["hb 3", "hb 4"]]
    rc, out, _ = climc("server-serial-log", "--follow", "--tail", "1", "vm1")
    assert rc == 0 and out.splitlines() == ["hb 1", "hb 2", "hb 3", "hb 4"]
    assert fake.requests["WatchServerSerialLog"][0] == spb.WatchServerSerialLogRequest(id="vm1", tail_lines=1)


def test_serial_log_follow_bounded_by_timeout(climc: Run, fake: FakeRegion) -> None:
    fake.add_server("vm1")
    fake.serial_lines = ["hb 1"]
    fake.serial_stall = True
    rc, out, err = climc("--timeout", "0.3", "server-serial-log", "--follow", "vm1")
    assert rc == 0, err
    assert out.splitlines() == ["hb 1"]


# -- images ---------------------------------------------------------------------------

def test_image_create_streams_file(climc: Run, fake: FakeRegion, tmp_path) -> None:
    data = b"QFI\xfb" + os.urandom(CHUNK_SIZE * 2 + 777)
    path = tmp_path / "guest.qcow2"
    path.write_bytes(data)
    rc, out, err = climc("image-create", "--file", str(path), "--min-mem", "128", "guest")
    assert rc == 0, err
    msgs = fake.uploads[0]
    meta = msgs[0]
    assert meta.WhichOneof("part") == "metadata"
    assert (meta.metadata.name, meta.metadata.format, meta.metadata.min_memory_mb) == \
        ("guest", r.DISK_FORMAT_QCOW2, 128)
    assert all(m.WhichOneof("part") == "chunk" and len(m.chunk) <= CHUNK_SIZE for m in msgs[1:])
    assert b"".join(m.chunk for m in msgs[1:]) == data
    assert "qcow2" in out and "| name " in out


def test_image_create_raw_and_forced_format(climc: Run, fake: FakeRegion, tmp_path) -> None:
    path = tmp_path / "disk.raw"
    path.write_bytes(b"\x55\xaa" * 100)
    assert climc("image-create", "--file", str(path), "a")[0] == 0
    assert climc("image-create", "--file", str(path), "--format", "qcow2", "b")[0] == 0
    assert [u[0].metadata.format for u in fake.uploads] == [r.DISK_FORMAT_RAW, r.DISK_FORMAT_QCOW2]


def test_image_create_missing_file(climc: Run, fake: FakeRegion, tmp_path) -> None:
    rc, _, err = climc("image-create", "--file", str(tmp_path / "nope.img"), "x")
    assert rc == 1 and err.startswith("climc: error: No such file or directory") and "nope.img" in err
    assert not fake.uploads


def test_image_list_show_delete(climc: Run, fake: FakeRegion) -> None:
    fake.images["i1"] = r.Image(id="i1", name="cirros", format=r.DISK_FORMAT_QCOW2, size_bytes=1048576,
                                virtual_size_mb=64, status=r.IMAGE_STATUS_ACTIVE)
    rc, out, _ = climc("image-list", "--search", "cir")
    assert rc == 0 and "cirros" in out and "qcow2" in out and "active" in out and "1.0MiB" in out
    assert fake.requests["ListImages"][0].search == "cir"
    rc, out, _ = climc("--output", "json", "image-show", "cirros")
    assert json.loads(out)["format"] == "DISK_FORMAT_QCOW2"
    rc, out, _ = climc("image-delete", "i1")
    assert rc == 0 and "cirros" in out and not fake.images


# -- hosts and tasks ---------------------------------------------------------------------

def test_hosts(climc: Run, fake: FakeRegion) -> None:
    fake.hosts = [r.Host(id="h1", name="host1", hypervisor="kvm", status=r.HOST_STATUS_RUNNING,
                         host_status=r.HOST_HEALTH_ONLINE, enabled=True, cpu_count=8, cpu_used=2,
                         mem_size_mb=8192, mem_used_mb=512, accelerator=r.ACCELERATOR_TCG,
                         access_address="127.0.0.11:7720", cpu_model="Xeon", cpu_microcode="0x42e",
                         storages=[r.HostStorage(storage_id="shared0", kind=r.STORAGE_KIND_SHARED,
                                                 path="/srv/shared", capacity_mb=10240, free_mb=5120)],
                         networks=["net0"], wire="wire0")]
    rc, out, _ = climc("host-list", "--hypervisor", "kvm", "--search", "host")
    assert rc == 0
    assert fake.requests["ListHosts"][0].hypervisor == "kvm" and fake.requests["ListHosts"][0].search == "host"
    row = out.splitlines()[3]
    for v in ("h1", "host1", "127.0.0.11:7720", "running", "online", "true", "kvm", "2/8", "512/8192", "tcg"):
        assert f" {v} " in row
    rc, out, _ = climc("host-show", "host1")
    assert "0x42e" in out and "shared0 shared /srv/shared free 5G of 10G" in out
    rc, out, _ = climc("--output", "json", "host-list")
    assert json.loads(out)["hosts"][0]["host_status"] == "HOST_HEALTH_ONLINE"


def test_tasks(climc: Run, fake: FakeRegion) -> None:
    fake.tasks["t1"] = create_script("t1", "srv-1", fail=True)
    rc, out, _ = climc("task-list", "--server", "vm1", "--state", "failed", "--limit", "5")
    assert rc == 0
    q = fake.requests["ListTasks"][0]
    assert (q.server, q.state, q.limit) == ("vm1", r.TASK_STATE_FAILED, 5)
    assert "server_create" in out and " failed " in out and "disk image copy failed" in out
    rc, out, _ = climc("task-show", "t1")
    assert "schedule" in out and "DISK_PREPARE_FAILED" in out
    rc, out, _ = climc("task-list", "--state", "rolling_back")
    assert fake.requests["ListTasks"][1].state == r.TASK_STATE_ROLLING_BACK


# -- errors ---------------------------------------------------------------------------------

def test_not_found(climc: Run, fake: FakeRegion) -> None:
    rc, out, err = climc("server-show", "ghost")
    assert rc == 1 and out == ""
    assert err == "climc: error: NOT_FOUND: server 'ghost' not found\n"


def test_invalid_argument_names_field(climc: Run, fake: FakeRegion) -> None:
    fake.fail("CreateServer", InvalidArgument("name", "must be 1-64 characters of letters, digits, '-', '_' and '.'"))
    rc, _, err = climc("server-create", "--image", "i", "bad name!")
    assert rc == 1
    assert err.startswith("climc: error: INVALID_ARGUMENT: name: must be 1-64 characters")
    assert len(err.splitlines()) == 1


def test_invalid_argument_field_added_when_missing(climc: Run, fake: FakeRegion) -> None:
    e = InvalidArgument("memory_mb", "x")
    e.message = "out of range"
    fake.fail("CreateServer", e)
    rc, _, err = climc("server-create", "--image", "i", "vm")
    assert err == "climc: error: INVALID_ARGUMENT: out of range (field memory_mb)\n"


def test_resource_exhausted_lists_rejected_hosts(climc: Run, fake: FakeRegion) -> None:
    e = ResourceExhausted("no host can take server vm1")
    e.details.append(scheduler_pb2.SelectHostResponse(rejected=[
        scheduler_pb2.RejectedHost(host_id="h1", host_name="host1", rejections=[
            scheduler_pb2.Rejection(filter="memory", reason="INSUFFICIENT_MEMORY",
                                    message="needs 4096 MiB, 1024 MiB free"),
            scheduler_pb2.Rejection(filter="cpu", reason="INSUFFICIENT_CPU", message="needs 8 vCPUs, 2 free")]),
        scheduler_pb2.RejectedHost(host_id="h2", host_name="host2", rejections=[
            scheduler_pb2.Rejection(filter="status", reason="HOST_OFFLINE", message="host is offline")])]))
    fake.fail("CreateServer", e)
    rc, out, err = climc("server-create", "--image", "i", "--mem", "4G", "vm1")
    assert rc == 1 and out == ""
    lines = err.splitlines()
    assert lines[0] == "climc: error: RESOURCE_EXHAUSTED: no host can take server vm1"
    assert lines[1] == ("  rejected host host1 (h1): memory/INSUFFICIENT_MEMORY: needs 4096 MiB, 1024 MiB free; "
                        "cpu/INSUFFICIENT_CPU: needs 8 vCPUs, 2 free")
    assert lines[2] == "  rejected host host2 (h2): status/HOST_OFFLINE: host is offline"
    assert len(lines) == 3


def test_aborted(climc: Run, fake: FakeRegion) -> None:
    fake.fail("StopServer", Aborted("server vm1 already runs task t9 (server_start)"))
    rc, _, err = climc("server-stop", "vm1")
    assert rc == 1 and err == "climc: error: ABORTED: server vm1 already runs task t9 (server_start)\n"


def test_unreachable_region(capsys: pytest.CaptureFixture[str], closed_address: str,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    from ferry_client.climc.main import main
    monkeypatch.setenv("FERRY_REGION", closed_address)   # address from the environment
    rc = main(["server-list"])
    out, err = capsys.readouterr()
    assert rc == 1 and out == ""
    assert err.startswith(f"climc: error: UNAVAILABLE: cannot reach the region at {closed_address}")
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_internal_bug_is_one_line(climc: Run, fake: FakeRegion, monkeypatch: pytest.MonkeyPatch) -> None:
    from ferry_client.climc import servers
    monkeypatch.delenv("FERRY_DEBUG", raising=False)
    monkeypatch.setattr(servers, "server_fields", lambda *a, **k: 1 / 0)
    sample_server(fake)
    rc, _, err = climc("server-show", "vm1")
    assert rc == 1 and err.startswith("climc: error: internal error: ZeroDivisionError")
    assert "Traceback" not in err


def test_wait_timeout(climc: Run, fake: FakeRegion) -> None:
    sample_server(fake)
    fake.watch_mode = "stall"
    rc, out, err = climc("--timeout", "0.3", "server-start", "--wait", "vm1")
    assert rc == 1 and "Task " in out
    assert err.startswith("climc: error: DEADLINE_EXCEEDED: task ") and "did not end within 0.3 s" in err
    assert "still at stage run" in err


def test_ctrl_c_during_wait(climc: Run, fake: FakeRegion, monkeypatch: pytest.MonkeyPatch) -> None:
    from ferry_client import FerryClient

    def interrupted(self, task_id, **kw):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(FerryClient, "wait_task", interrupted)
    sample_server(fake)
    rc, _, err = climc("server-stop", "--wait", "vm1")
    assert rc == 130 and err.startswith("climc: interrupted; task ") and "climc task-show" in err
