"""More live-migration faults on a real 2-host cluster: the network to the
target cut mid-migration (iptables on the target agent's loopback address),
and the target QEMU killed alone. In both the guest keeps running on its
source, the task ends migrate_failed with a reason, and a retry succeeds."""

from __future__ import annotations

import subprocess

import pytest
from ferry_client import TaskFailed

from .test_cluster_live import (
    MIGRATE_FAILED,
    RUNNING,
    _kill_incoming_qemu,
    boot,
    climc,
    heartbeats,
    hosts_ready,
    other_host,
    until,
    wait_in_flight,
)
from .test_cluster_live import client, images, lcluster  # noqa: F401 - module fixtures

pytestmark = [pytest.mark.qemu, pytest.mark.etcd]


def _iptables(action: str, addr: str) -> None:
    for chain, flag in (("INPUT", "-d"), ("OUTPUT", "-s")):
        subprocess.run(["iptables", action, chain, flag, addr, "-p", "tcp", "-j", "DROP"],
                       check=True, capture_output=True)


def _guest_runs_on_source(client, name: str, source: str) -> None:
    s = client.servers.get(name)
    assert s.status == MIGRATE_FAILED and s.status_reason, (s.status, s.status_reason)
    assert s.host_id == source
    before = heartbeats(client, name)[-1]
    until(lambda: heartbeats(client, name)[-1] > before, 30, "heartbeats on the source")


def test_network_to_target_cut(lcluster, client, images) -> None:  # noqa: F811
    server = boot(lcluster, client, "lv-n", images["busy"], "--mem", "128")
    source, target = server.host_id, other_host(lcluster, server.host_id)
    addr = target.address.rsplit(":", 1)[0]
    resp = client.migrations.live_migrate("lv-n", max_bandwidth_mb=1)
    wait_in_flight(client, "lv-n")
    _iptables("-I", addr)
    try:
        # Nothing reaches the target any more: the operator cancels; the source
        # side ends at once and the target's cleanup is left to the reconciler.
        client.migrations.cancel_live_migrate("lv-n")
        with pytest.raises(TaskFailed):
            client.wait_task(resp.task_id, timeout=120)
        _guest_runs_on_source(client, "lv-n", source)
    finally:
        _iptables("-D", addr)
    hosts_ready(client)
    resp = client.migrations.live_migrate("lv-n", quickly_finish=True)
    client.wait_task(resp.task_id, timeout=120)
    s = client.servers.get("lv-n")
    assert s.status == RUNNING and s.host_id == target.host_id
    climc(lcluster, "server-delete", "--wait", "lv-n")


def test_target_qemu_killed(lcluster, client, images) -> None:  # noqa: F811
    server = boot(lcluster, client, "lv-q", images["busy"], "--mem", "128")
    source, target = server.host_id, other_host(lcluster, server.host_id)
    resp = client.migrations.live_migrate("lv-q", max_bandwidth_mb=1)
    wait_in_flight(client, "lv-q")
    _kill_incoming_qemu(target, server.id)
    with pytest.raises(TaskFailed):
        client.wait_task(resp.task_id, timeout=120)
    _guest_runs_on_source(client, "lv-q", source)
    hosts_ready(client)
    resp = client.migrations.live_migrate("lv-q", quickly_finish=True)
    client.wait_task(resp.task_id, timeout=120)
    s = client.servers.get("lv-q")
    assert s.status == RUNNING and s.host_id == target.host_id
    climc(lcluster, "server-delete", "--wait", "lv-q")
