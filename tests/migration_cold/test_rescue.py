"""Rescue mode: the source host is powered off; shared-disk servers start elsewhere and the
old host, when it comes back, removes its stale copy without touching the shared disks."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
from ferry_client import FailedPrecondition
from ferry_proto.region.v1 import resources_pb2 as rpb

from .conftest import climc, host_of, until

pytestmark = [pytest.mark.qemu, pytest.mark.etcd]

HB = re.compile(r"FERRY-HB (\d+)")


def _heartbeats(client, name: str) -> list[int]:
    return [int(m.group(1)) for line in client.servers.serial_log(name, 50)
            if (m := HB.search(line))]


def _power_off(cluster, host, server_ids: list[str]) -> None:
    """SIGKILL of the agent and of its QEMU processes (by the PIDs it recorded)."""
    pids = []
    for sid in server_ids:
        pidfile = Path(host.state_dir) / "guests" / sid / "qemu.pid"
        if pidfile.exists():
            pids.append(int(pidfile.read_text().split()[0]))
    cluster.stop_process(host.name, sig=signal.SIGKILL)
    cluster.stop_process(f"{host.name}-health", sig=signal.SIGKILL)  # holds the etcd lease
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_rescue_runs_shared_server_elsewhere_and_old_host_cleans_up(ccluster, cclient,
                                                                     cimage) -> None:
    climc(ccluster, "server-create", "--image", cimage, "--mem", "64", "--storage", "shared",
          "--data-disk", "16M:shared", "--auto-start", "--wait", "cm-res")
    s = cclient.servers.get("cm-res")
    host = host_of(ccluster, s.host_id)
    climc(ccluster, "server-create", "--image", cimage, "--mem", "64", "--prefer-host",
          s.host_id, "--wait", "cm-res-local")
    local = cclient.servers.get("cm-res-local")
    until(lambda: _heartbeats(cclient, "cm-res"), 60, "heartbeats before the crash")
    shared_paths = [d.path for d in s.disks]

    # The host is still online: refused, naming the host state.
    with pytest.raises(FailedPrecondition) as e:
        cclient.migrations.migrate("cm-res", rescue_mode=True)
    assert "online" in str(e.value)

    _power_off(ccluster, host, [s.id, local.id])
    try:
        until(lambda: cclient.hosts.get(s.host_id).host_status == rpb.HOST_HEALTH_OFFLINE, 30,
              "the host to be seen offline")
        # A local disk cannot be rescued: refused, naming the disk.
        with pytest.raises(FailedPrecondition) as e:
            cclient.migrations.migrate("cm-res-local", rescue_mode=True)
        assert local.disks[0].id in str(e.value) and "local" in str(e.value)

        climc(ccluster, "server-migrate", "--rescue-mode", "--wait", "cm-res")
        r = cclient.servers.get("cm-res")
        assert r.status == rpb.SERVER_STATUS_RUNNING and r.host_id != s.host_id
        assert [d.path for d in r.disks] == shared_paths, "only metadata moved"
        until(lambda: _heartbeats(cclient, "cm-res"), 60, "heartbeats on the rescue host")
    finally:
        ccluster.start_process(f"{host.name}-health")
        ccluster.start_process(host.name)
        ccluster.wait_hosts_online([host.host_id])

    # The old host learns the server lives elsewhere: it removes its stale copy (not started),
    # keeps the shared disks, and the rescued server keeps running.
    until(lambda: not (Path(host.state_dir) / "guests" / s.id).exists(), 60,
          "the stale guest to be removed from the old host")
    assert all(Path(p).exists() for p in shared_paths)
    first = _heartbeats(cclient, "cm-res")
    until(lambda: (h := _heartbeats(cclient, "cm-res")) and h[-1] > first[-1], 60,
          "the rescued server to keep running")
    assert cclient.servers.get("cm-res").host_id == r.host_id
    # The local-disk server stayed on its (returned) host with its disk.
    assert cclient.servers.get("cm-res-local").host_id == s.host_id
    assert Path(local.disks[0].path).exists()
    for name in ("cm-res", "cm-res-local"):
        climc(ccluster, "server-delete", "--wait", name)


def test_frozen_host_never_runs_the_server_twice(ccluster, cclient, cimage) -> None:
    """The old host was only frozen (its QEMU not killed). The rescued server never runs
    beside the stale copy: QEMU's image lock refuses a second writer on the shared disk (one
    machine), the host's health keeper may fence its own guests, and when the old agent is back
    it stops (logging SPLIT BRAIN) and removes its copy; the server then runs on its new host."""
    climc(ccluster, "server-create", "--image", cimage, "--mem", "64", "--storage", "shared",
          "--auto-start", "--wait", "cm-split")
    s = cclient.servers.get("cm-split")
    host = host_of(ccluster, s.host_id)
    pid = int((Path(host.state_dir) / "guests" / s.id / "qemu.pid").read_text().split()[0])
    agent, health = ccluster.process(host.name).pid, ccluster.process(f"{host.name}-health").pid
    os.kill(health, signal.SIGSTOP)
    os.kill(agent, signal.SIGSTOP)
    try:
        until(lambda: cclient.hosts.get(s.host_id).host_status == rpb.HOST_HEALTH_OFFLINE, 30,
              "the frozen host to be seen offline")
        climc(ccluster, "server-migrate", "--rescue-mode", "--wait", "cm-split", check=False)
        r = cclient.servers.get("cm-split")
        assert r.host_id != s.host_id
        assert r.status in (rpb.SERVER_STATUS_RUNNING, rpb.SERVER_STATUS_START_FAIL)
    finally:
        os.kill(agent, signal.SIGCONT)
        os.kill(health, signal.SIGCONT)
    ccluster.wait_hosts_online([host.host_id])

    def stale_gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return not (Path(host.state_dir) / "guests" / s.id).exists()
        return False

    until(stale_gone, 60, "the stale copy to be stopped and removed")
    assert all(Path(d.path).exists() for d in s.disks), "shared disks kept"
    if cclient.servers.get("cm-split").status == rpb.SERVER_STATUS_START_FAIL:
        climc(ccluster, "server-start", "--wait", "cm-split")
    r = cclient.servers.get("cm-split")
    assert r.status == rpb.SERVER_STATUS_RUNNING and r.host_id != s.host_id
    until(lambda: _heartbeats(cclient, "cm-split"), 60, "heartbeats on the rescue host")
    climc(ccluster, "server-delete", "--wait", "cm-split")
