"""Cold migration on real agents and real qcow2 files: content, backing, shared disks, sparse."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from ferry_client import FailedPrecondition, InvalidArgument, NotFound
from ferry_proto.region.v1 import resources_pb2 as rpb

from .conftest import climc, info, qemu_img, qemu_io, until

pytestmark = [pytest.mark.qemu, pytest.mark.etcd]

HB = re.compile(r"FERRY-HB (\d+)")
MIB = 1024 * 1024


def _heartbeats(client, name: str) -> list[int]:
    return [int(m.group(1)) for line in client.servers.serial_log(name, 50)
            if (m := HB.search(line))]


def test_cold_migrate_local_and_shared_disks(ccluster, cclient, cimage, tmp_path) -> None:
    climc(ccluster, "server-create", "--image", cimage, "--mem", "64", "--disk", "64M",
          "--data-disk", "32M", "--data-disk", "16M:shared", "--wait", "cm-a")
    s = cclient.servers.get("cm-a")
    assert s.status == rpb.SERVER_STATUS_READY
    sysd, datad, shared = sorted(s.disks, key=lambda d: d.index)
    assert shared.storage_kind == rpb.STORAGE_KIND_SHARED
    # Data written into the overlay and the local data disk; a marker on the shared disk.
    qemu_io(sysd.path, "write -P 0x5a 1M 3M", "write -z 8M 64k")
    qemu_io(datad.path, "write -P 0x33 0 2M", "write -P 0x44 20M 1M")
    qemu_io(shared.path, "write -P 0x77 0 1M")
    before = {}
    for d in (sysd, datad):  # keep the source bytes to compare after the source is deleted
        copy = tmp_path / Path(d.path).name
        shutil.copy(d.path, copy)
        before[d.id] = str(copy)
    src_backing = info(sysd.path)["full-backing-filename"]

    out = climc(ccluster, "server-migrate", "--wait", "cm-a")
    assert "cleanup_source" in out.stderr + out.stdout
    t = cclient.servers.get("cm-a")
    assert t.status == rpb.SERVER_STATUS_READY
    assert t.host_id and t.host_id != s.host_id
    tsys, tdata, tshared = sorted(t.disks, key=lambda d: d.index)
    # Local disks moved to the target's local storage; the shared disk stayed in place.
    assert tsys.path != sysd.path and tdata.path != datad.path
    assert tshared.path == shared.path and tshared.storage_id == shared.storage_id
    ti = info(tsys.path)
    assert ti["format"] == "qcow2"
    assert Path(ti["full-backing-filename"]).name == Path(src_backing).name  # same image, not flattened
    assert ti["full-backing-filename"] != src_backing  # the target's own image cache
    for d in (tsys, tdata):
        qemu_img("check", "-q", d.path)
        qemu_img("compare", "-q", before[d.id], d.path)  # identical guest-visible content
    assert not Path(sysd.path).exists() and not Path(datad.path).exists(), "source copy removed"
    assert Path(shared.path).exists()
    qemu_io(shared.path, "read -P 0x77 0 1M")
    assert t.progress.disk_bytes_total >= 6 * MIB

    # It boots on its new host.
    climc(ccluster, "server-start", "--wait", "cm-a")
    first = until(lambda: _heartbeats(cclient, "cm-a"), 60, "heartbeats on the target")
    until(lambda: (h := _heartbeats(cclient, "cm-a")) and h[-1] > first[-1], 60, "more heartbeats")

    # A running server is refused with FAILED_PRECONDITION naming its status.
    with pytest.raises(FailedPrecondition) as e:
        cclient.migrations.migrate("cm-a")
    assert "running" in str(e.value)
    climc(ccluster, "server-stop", "--wait", "cm-a")

    # --auto-start: back to the first host, running there.
    out = climc(ccluster, "server-migrate", "--auto-start", "--prefer-host", s.host_id, "--wait",
                "cm-a")
    u = cclient.servers.get("cm-a")
    assert u.host_id == s.host_id and u.status == rpb.SERVER_STATUS_RUNNING
    until(lambda: _heartbeats(cclient, "cm-a"), 60, "heartbeats after --auto-start")
    climc(ccluster, "server-delete", "--wait", "cm-a")


def test_sparse_disk_moves_only_its_data(ccluster, cclient, cimage) -> None:
    climc(ccluster, "server-create", "--image", cimage, "--mem", "64", "--data-disk", "2G",
          "--wait", "cm-sparse")
    s = cclient.servers.get("cm-sparse")
    data = sorted(s.disks, key=lambda d: d.index)[1]
    qemu_io(data.path, "write -P 0x21 0 1M", "write -P 0x22 1G 2M")
    resp = cclient.migrations.migrate("cm-sparse")
    cclient.wait_task(resp.task_id, timeout=120)
    t = cclient.servers.get("cm-sparse")
    assert t.status == rpb.SERVER_STATUS_READY and t.host_id != s.host_id
    # Only the written 3 MiB (plus whatever the overlay holds) crossed the wire.
    assert 3 * MIB <= t.progress.disk_bytes_total < 8 * MIB
    tdata = sorted(t.disks, key=lambda d: d.index)[1]
    assert info(tdata.path)["virtual-size"] == 2048 * MIB
    qemu_io(tdata.path, "read -P 0x22 1G 2M", "read -P 0 512M 1M")
    climc(ccluster, "server-delete", "--wait", "cm-sparse")


def test_bad_requests_are_refused(ccluster, cclient, cimage) -> None:
    with pytest.raises(NotFound):
        cclient.migrations.migrate("no-such-server")
    with pytest.raises(InvalidArgument) as e:
        cclient.migrations.migrate("")
    assert e.value.field == "id"
    climc(ccluster, "server-create", "--image", cimage, "--mem", "64", "--wait", "cm-bad")
    s = cclient.servers.get("cm-bad")
    with pytest.raises(InvalidArgument) as e:
        cclient.migrations.migrate("cm-bad", max_bandwidth_mb=-1)
    assert e.value.field == "max_bandwidth_mb"
    with pytest.raises(NotFound):
        cclient.migrations.migrate("cm-bad", prefer_host="no-such-host")
    with pytest.raises(FailedPrecondition) as e:
        cclient.migrations.migrate("cm-bad", prefer_host=s.host_id)
    assert "already on host" in str(e.value)
    proc = climc(ccluster, "server-migrate", "--rescue-mode", "cm-bad", check=False)
    assert proc.returncode == 1 and "FAILED_PRECONDITION" in proc.stderr
    assert "online" in proc.stderr and "Traceback" not in proc.stderr
    assert cclient.servers.get("cm-bad").status == rpb.SERVER_STATUS_READY
    climc(ccluster, "server-delete", "--wait", "cm-bad")
