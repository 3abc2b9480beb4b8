"""The whole product on the one-machine cluster: real etcd, region, scheduler,
three host agents as processes, real QEMU guests, driven through climc and the SDK."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from ferry_client import Aborted, InvalidArgument, NotFound
from helpers import climc, heartbeat_numbers, until
from ferry_host.testguest.build import build_image

pytestmark = [pytest.mark.qemu, pytest.mark.etcd]



def heartbeats(lines: list[str]) -> list[int]:
    return heartbeat_numbers(lines)


@pytest.fixture(scope="module")
def image(cluster, tmp_path_factory) -> str:
    path = build_image(tmp_path_factory.mktemp("img") / "guest.img", dirty_mb=4)
    climc(cluster, "image-create", "--file", str(path), "e2e-guest")
    return "e2e-guest"


def test_hosts_report_real_facts(cluster) -> None:
    out = json.loads(climc(cluster, "--output", "json", "host-list", "--hypervisor", "kvm").stdout)
    hosts = out["hosts"] if isinstance(out, dict) else out
    assert len(hosts) == 3
    model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name"))
    for h in hosts:
        assert h["cpu_model"] == model
        assert h["kernel_version"] == os.uname().release
        assert h["host_status"] in ("HOST_HEALTH_ONLINE", "online")
    assert json.loads(climc(cluster, "--output", "json", "host-list", "--hypervisor", "xen").stdout) \
        in ([], {"hosts": []}, {})


def test_bad_image_is_refused_and_nothing_stored(cluster, tmp_path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("this is not a disk image\n" * 100)
    proc = climc(cluster, "image-create", "--file", str(junk), "--format", "raw", "junk", check=False)
    assert proc.returncode == 1
    assert "INVALID_ARGUMENT" in proc.stderr
    assert "junk" not in climc(cluster, "image-list").stdout


def test_server_lifecycle_on_real_guests(cluster, cluster_client, image) -> None:
    climc(cluster, "server-create", "--image", image, "--mem", "64", "--auto-start", "--wait", "e2e-a")
    climc(cluster, "server-create", "--image", image, "--mem", "64", "--storage", "shared",
          "--auto-start", "--wait", "e2e-b")
    a = cluster_client.servers.get("e2e-a")
    b = cluster_client.servers.get("e2e-b")
    assert a.status == b.status == 9  # running
    assert a.host_id != b.host_id, "the scheduler spreads equal servers over equal hosts"
    assert b.disks[0].storage_kind == 2  # shared

    lines = until(lambda: heartbeats(cluster_client.servers.serial_log("e2e-a", 50))[2:] and
                  cluster_client.servers.serial_log("e2e-a", 50), 30, "heartbeats")
    first = heartbeats(lines)
    later = until(lambda: (h := heartbeats(cluster_client.servers.serial_log("e2e-a", 5)))
                  and h[-1] > first[-1] and h, 30, "the heartbeat to go on")
    assert later[-1] > first[-1]

    listing = climc(cluster, "server-list", "--search", "e2e-", "--details", "--scope", "system").stdout
    assert "e2e-a" in listing and "e2e-b" in listing and "running" in listing

    # A second operation while one runs is refused with ABORTED. Freezing the
    # agent keeps the stop task in flight for as long as the test needs.
    agent = cluster.process(next(h.name for h in cluster.hosts if h.host_id == a.host_id))
    os.kill(agent.pid, signal.SIGSTOP)
    try:
        resp = cluster_client.servers.stop("e2e-a")
        with pytest.raises(Aborted):
            cluster_client.servers.start("e2e-a")
    finally:
        os.kill(agent.pid, signal.SIGCONT)
    cluster_client.wait_task(resp.task_id, timeout=60)
    assert cluster_client.servers.get("e2e-a").status == 6  # ready

    climc(cluster, "server-start", "--wait", "e2e-a")
    assert cluster_client.servers.get("e2e-a").status == 9
    for name in ("e2e-a", "e2e-b"):
        climc(cluster, "server-delete", "--wait", name)
        with pytest.raises(NotFound):
            cluster_client.servers.get(name)


def test_agent_restart_keeps_guest_running(cluster, cluster_client, image) -> None:
    climc(cluster, "server-create", "--image", image, "--mem", "64", "--auto-start", "--wait", "e2e-r")
    server = cluster_client.servers.get("e2e-r")
    host = next(h for h in cluster.hosts if h.host_id == server.host_id)
    before = until(lambda: heartbeats(cluster_client.servers.serial_log("e2e-r", 5)), 30, "heartbeats")
    boots_before = sum("FERRY-BOOT" in l for l in cluster_client.servers.serial_log("e2e-r", 10000))

    cluster.stop_process(host.name, sig=signal.SIGKILL)
    cluster.start_process(host.name)
    cluster.wait_hosts_online([host.host_id])
    after = until(lambda: (h := heartbeats(cluster_client.servers.serial_log("e2e-r", 5)))
                  and h[-1] > before[-1] and h, 30, "heartbeats after the agent restart")
    assert after[-1] > before[-1]
    boots_after = sum("FERRY-BOOT" in l for l in cluster_client.servers.serial_log("e2e-r", 10000))
    assert boots_after == boots_before == 1, "the guest was not rebooted"
    assert cluster_client.servers.get("e2e-r").status == 9
    climc(cluster, "server-delete", "--wait", "e2e-r")


def test_bad_input_gets_clear_errors(cluster, cluster_client, image) -> None:
    with pytest.raises(InvalidArgument) as e:
        cluster_client.servers.create("", image)
    assert e.value.field == "name"
    with pytest.raises(InvalidArgument) as e:
        cluster_client.servers.create("neg", image, memory_mb=-1)
    assert e.value.field == "memory_mb"
    with pytest.raises(NotFound):
        cluster_client.servers.create("noimg", "no-such-image")
    proc = climc(cluster, "server-show", "no-such-server", check=False)
    assert proc.returncode == 1 and "NOT_FOUND" in proc.stderr and "Traceback" not in proc.stderr
    names = [s.name for s in cluster_client.servers.iter(search="", scope="system")]
    assert not {"neg", "noimg"} & set(names)
