"""Cold migration failures on purpose: corrupted chunks, a source agent killed mid-copy."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from ferry_client import TaskFailed
from ferry_proto.region.v1 import resources_pb2 as rpb

from .conftest import climc, host_of, info, qemu_img, qemu_io, until

pytestmark = [pytest.mark.qemu, pytest.mark.etcd]

MIB = 1024 * 1024


def _log(cluster, host) -> str:
    return (cluster.plan.logs / f"{host.name}.log").read_text(errors="replace")


def _fault(cluster, host_id: str, name: str) -> Path:
    d = Path(host_of(cluster, host_id).state_dir) / "faults"
    d.mkdir(exist_ok=True)
    return d / name


def _other_host(cluster, host_id: str):
    return next(h for h in cluster.hosts if h.host_id != host_id)


def _guest_dir(cluster, host, server_id: str) -> Path:
    return Path(host.state_dir) / "guests" / server_id


def test_corrupted_chunk_is_retried_and_persistent_corruption_fails_cleanly(
        ccluster, cclient, cimage, tmp_path) -> None:
    climc(ccluster, "server-create", "--image", cimage, "--mem", "64", "--data-disk", "64M",
          "--wait", "cm-sum")
    s = cclient.servers.get("cm-sum")
    data = sorted(s.disks, key=lambda d: d.index)[1]
    qemu_io(data.path, "write -P 0x61 0 12M")
    keep = tmp_path / "data.qcow2"
    keep.write_bytes(Path(data.path).read_bytes())
    target = _other_host(ccluster, s.host_id)

    # Every chunk corrupted: retried, then failed; the server is intact on its source.
    always = _fault(ccluster, s.host_id, "corrupt-read-always")
    always.touch()
    try:
        resp = cclient.migrations.migrate("cm-sum", prefer_host=target.host_id)
        with pytest.raises(TaskFailed) as e:
            cclient.wait_task(resp.task_id, timeout=120)
        assert "failed its checksum" in str(e.value)
    finally:
        always.unlink(missing_ok=True)
    f = cclient.servers.get("cm-sum")
    assert f.status == rpb.SERVER_STATUS_MIGRATE_FAILED and "failed its checksum" in f.status_reason
    assert f.host_id == s.host_id
    assert [d.path for d in f.disks] == [d.path for d in s.disks]
    qemu_img("compare", "-q", str(keep), data.path)
    assert not _guest_dir(ccluster, target, s.id).exists(), "no guest left on the target"
    assert not any(Path(target.local_storage, "disks").glob(f"{data.id}*"))

    # One corrupted chunk: detected, fetched again, the copy is identical.
    _fault(ccluster, s.host_id, "corrupt-read-once").touch()
    resp = cclient.migrations.migrate("cm-sum", prefer_host=target.host_id)
    cclient.wait_task(resp.task_id, timeout=120)
    t = cclient.servers.get("cm-sum")
    assert t.status == rpb.SERVER_STATUS_READY and t.host_id == target.host_id
    assert "failed its checksum (xxh3-128)" in _log(ccluster, target)
    qemu_img("compare", "-q", str(keep), sorted(t.disks, key=lambda d: d.index)[1].path)
    climc(ccluster, "server-delete", "--wait", "cm-sum")


def test_source_agent_killed_mid_copy_then_retry_resumes(ccluster, cclient, cimage,
                                                          tmp_path) -> None:
    climc(ccluster, "server-create", "--image", cimage, "--mem", "64", "--data-disk", "128M",
          "--wait", "cm-kill")
    s = cclient.servers.get("cm-kill")
    data = sorted(s.disks, key=lambda d: d.index)[1]
    qemu_io(data.path, "write -P 0x71 0 48M")
    keep = tmp_path / "data.qcow2"
    keep.write_bytes(Path(data.path).read_bytes())
    source = host_of(ccluster, s.host_id)
    target = _other_host(ccluster, s.host_id)

    resp = cclient.migrations.migrate("cm-kill", prefer_host=target.host_id, max_bandwidth_mb=8)
    until(lambda: cclient.servers.get("cm-kill").progress.disk_bytes_done >= 20 * MIB, 60,
          "20 MiB copied")
    ccluster.stop_process(source.name, sig=signal.SIGKILL)
    try:
        with pytest.raises(TaskFailed):
            cclient.wait_task(resp.task_id, timeout=60)
        f = cclient.servers.get("cm-kill")
        assert f.status == rpb.SERVER_STATUS_MIGRATE_FAILED and f.host_id == s.host_id
        assert f.status_reason
        assert not _guest_dir(ccluster, target, s.id).exists()
        assert not Path(target.local_storage, "disks", f"{data.id}.qcow2").exists()
    finally:
        ccluster.start_process(source.name)
        ccluster.wait_hosts_online([source.host_id])
    qemu_img("compare", "-q", str(keep), data.path)  # the source is intact
    # The system disk was copied completely before the kill; it changes before the retry,
    # so the retry must copy it again rather than trust the earlier copy.
    sysd = min(s.disks, key=lambda d: d.index)
    qemu_io(sysd.path, "write -P 0x7e 0 1M")
    keep_sys = tmp_path / "sys.qcow2"
    keep_sys.write_bytes(Path(sysd.path).read_bytes())

    resp = cclient.migrations.migrate("cm-kill", prefer_host=target.host_id)
    cclient.wait_task(resp.task_id, timeout=120)
    t = cclient.servers.get("cm-kill")
    assert t.status == rpb.SERVER_STATUS_READY and t.host_id == target.host_id
    assert "resuming at offset" in _log(ccluster, target)
    tdata = sorted(t.disks, key=lambda d: d.index)[1]
    qemu_img("compare", "-q", str(keep), tdata.path)
    qemu_img("compare", "-q", str(keep_sys), min(t.disks, key=lambda d: d.index).path)
    assert "changed on the source since it was copied" in _log(ccluster, target)
    assert info(tdata.path)["format"] == "qcow2"
    assert not Path(data.path).exists()
    climc(ccluster, "server-delete", "--wait", "cm-kill")


def test_target_disk_full_fails_cleanly_and_retry_works(ccluster, cclient, cimage,
                                                          tmp_path) -> None:
    import subprocess

    climc(ccluster, "server-create", "--image", cimage, "--mem", "64", "--data-disk", "64M",
          "--wait", "cm-full")
    s = cclient.servers.get("cm-full")
    data = sorted(s.disks, key=lambda d: d.index)[1]
    qemu_io(data.path, "write -P 0x3f 0 40M")
    keep = tmp_path / "data.qcow2"
    keep.write_bytes(Path(data.path).read_bytes())
    target = _other_host(ccluster, s.host_id)
    work = Path(target.local_storage) / "migrating"
    work.mkdir(exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(work)],
                             capture_output=True, check=False).returncode == 0
    if not mounted:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        resp = cclient.migrations.migrate("cm-full", prefer_host=target.host_id)
        with pytest.raises(TaskFailed) as e:
            cclient.wait_task(resp.task_id, timeout=120)
        assert "STORAGE_FULL" in str(e.value) or "space" in str(e.value)
        f = cclient.servers.get("cm-full")
        assert f.status == rpb.SERVER_STATUS_MIGRATE_FAILED and f.host_id == s.host_id
        assert not any(work.iterdir()), "the partial copy is removed when the disk is full"
        assert not _guest_dir(ccluster, target, s.id).exists()
    finally:
        subprocess.run(["umount", str(work)], check=False)
    qemu_img("compare", "-q", str(keep), data.path)
    resp = cclient.migrations.migrate("cm-full", prefer_host=target.host_id)
    cclient.wait_task(resp.task_id, timeout=120)
    t = cclient.servers.get("cm-full")
    assert t.status == rpb.SERVER_STATUS_READY and t.host_id == target.host_id
    qemu_img("compare", "-q", str(keep), sorted(t.disks, key=lambda d: d.index)[1].path)
    climc(ccluster, "server-delete", "--wait", "cm-full")
