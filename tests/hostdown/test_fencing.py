"""Fencing and no false failover on the one-machine cluster (real etcd, keepers, agents, QEMU)."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from ferry_compose import probes

from .conftest import (
    FENCE_AFTER,
    TTL,
    WINDOW,
    DoubleRunMonitor,
    cut_off,
    guest_pids,
    incidents,
    make_guest,
    until,
)

pytestmark = [pytest.mark.qemu, pytest.mark.etcd]


def test_agent_killed_and_restarted_keeps_the_lease_and_its_guest(hd_cluster) -> None:
    cluster, client = hd_cluster
    client.hosts.set_auto_migrate("host1", on_host_down=True)
    sid = make_guest(client, "hd-agent", "host1")
    pid = guest_pids(cluster, "host1")[sid]
    with DoubleRunMonitor(cluster) as mon:
        cluster.stop_process("host1", signal.SIGKILL)
        # Longer than TTL + window: the keeper holds the key, nothing happens.
        deadline = time.monotonic() + TTL + WINDOW + 2
        while time.monotonic() < deadline:
            ok, detail = probes.hosts_online(cluster.region_address, ["host1", "host2"])
            assert ok, detail
            time.sleep(0.3)
        cluster.start_process("host1")
        srv = client.servers.get(sid)
    mon.check()
    assert guest_pids(cluster, "host1").get(sid) == pid, "the guest kept running, same QEMU"
    assert srv.host_id == "host1"
    assert incidents(cluster) == []


def test_host_cut_off_fences_its_shared_guests_before_the_window_ends(hd_cluster) -> None:
    cluster, client = hd_cluster
    client.hosts.set_auto_migrate("host1", on_host_down=True)
    sid = make_guest(client, "hd-cut", "host1")
    local = make_guest(client, "hd-cut-local", "host1", storage="local")
    h1 = cluster.host("host1")
    with DoubleRunMonitor(cluster) as mon:
        with cut_off(h1.ip):
            t_cut = time.monotonic()
            until(lambda: sid not in guest_pids(cluster, "host1"), TTL + WINDOW, "the fence")
            fenced_after = time.monotonic() - t_cut
            # The region sees the key expire, waits, finds the agent silent: the incident
            # leaves WAITING only after the window; by then the guest is long stopped.
            until(lambda: any(i["state"] != "waiting" for i in incidents(cluster, "host1")),
                  TTL + WINDOW + 10, "the region to confirm host1 down")
            assert local in guest_pids(cluster, "host1"), "local-disk guests are not fenced"
            inc = until(lambda: [i for i in incidents(cluster, "host1") if i["state"] == "done"],
                        60, "the rescue to finish")[0]
            rescued = client.servers.get(sid)
            assert rescued.host_id == "host2" and sid in guest_pids(cluster, "host2")
        record = json.loads((h1.state_dir / "guests" / sid / "fenced.json").read_text())
    mon.check()
    print(f"fenced {fenced_after:.2f}s after the cut (deadline {FENCE_AFTER}s, "
          f"key expiry {TTL}s, rescue not before {TTL + WINDOW}s)")
    assert fenced_after < TTL + WINDOW
    # The region keeps answering SERVING (it sees etcd): the keeper fences by its
    # last chance, 0.9 x TTL, still before the key expires.
    assert fenced_after < max(FENCE_AFTER, 0.9 * TTL) + 1.0
    assert "no lease renewal" in record["reason"]
    results = json.loads(inc["results"])
    assert results[sid]["outcome"] == "succeeded", results
    assert results[local]["action"] == "lost"
    assert "local disks" in client.servers.get(local).status_reason


def test_etcd_down_is_not_host_down(hd_cluster) -> None:
    cluster, client = hd_cluster
    client.hosts.set_auto_migrate("host1", on_host_down=True)
    sid = make_guest(client, "hd-etcd", "host1")
    pid = guest_pids(cluster, "host1")[sid]
    with DoubleRunMonitor(cluster) as mon:
        cluster.stop_process("etcd", signal.SIGKILL)
        try:
            time.sleep(TTL + WINDOW + 2)
            srv = client.servers.get(sid)
            assert srv.host_id == "host1"
            assert all(i["state"] in ("waiting", "cancelled") for i in incidents(cluster))
        finally:
            cluster.start_process("etcd")
        cluster.wait_hosts_online(timeout=30)
        time.sleep(WINDOW + 1)
    mon.check()
    assert client.servers.get(sid).host_id == "host1"
    assert not [i for i in incidents(cluster) if i["state"] in ("rescuing", "done", "paused")]
    # The keepers could not renew, but the region did not see etcd either: no fencing.
    assert guest_pids(cluster, "host1").get(sid) == pid, "the guest kept running, same QEMU"
    assert not (cluster.host("host1").state_dir / "guests" / sid / "fenced.json").exists()


def test_agent_frozen_past_the_window_is_left_alone(hd_cluster) -> None:
    cluster, client = hd_cluster
    client.hosts.set_auto_migrate("host1", on_host_down=True)
    sid = make_guest(client, "hd-frozen", "host1")
    pid = guest_pids(cluster, "host1")[sid]
    agent = cluster.process("host1")
    with DoubleRunMonitor(cluster) as mon:
        os.kill(agent.pid, signal.SIGSTOP)
        try:
            time.sleep(TTL + WINDOW + 2)
        finally:
            os.kill(agent.pid, signal.SIGCONT)
        srv = client.servers.get(sid)
    mon.check()
    assert srv.host_id == "host1" and guest_pids(cluster, "host1").get(sid) == pid
    assert incidents(cluster) == []
