"""Live migration through the whole product: a 2-host one-machine cluster of
real processes (etcd, region, scheduler, agents on 127.0.0.11-12), real QEMU
under TCG, driven through climc and the SDK."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import grpc
import pytest
from ferry_client import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    TaskFailed,
)
from ferry_host.driver.qmp import QmpDriver
from ferry_host.testguest.build import build_image
from ferry_proto.host.v1 import agent_pb2, agent_pb2_grpc
from ferry_proto.region.v1 import resources_pb2
from fixtures.cluster import region_client, start_cluster
from helpers import climc, heartbeat_numbers, until

pytestmark = [pytest.mark.qemu, pytest.mark.etcd]

RUNNING = resources_pb2.SERVER_STATUS_RUNNING
MIGRATE_FAILED = resources_pb2.SERVER_STATUS_MIGRATE_FAILED


def heartbeats(client, name: str) -> list[int]:
    return heartbeat_numbers(client.servers.serial_log(name, 20))


def guest_ids(host) -> list[str]:
    with grpc.insecure_channel(host.address) as ch:
        resp = agent_pb2_grpc.HostAgentServiceStub(ch).ListGuests(agent_pb2.ListGuestsRequest(),
                                                                  timeout=10)
    return [g.guest_id for g in resp.guests]


@pytest.fixture(scope="module")
def lcluster(tmp_path_factory):
    c = start_cluster(tmp_path_factory.mktemp("live"), hosts=2)
    try:
        yield c
    finally:
        c.down()
        c.remove_links()


@pytest.fixture(scope="module")
def client(lcluster):
    cl = region_client(lcluster)
    try:
        yield cl
    finally:
        cl.close()


@pytest.fixture(scope="module")
def images(lcluster, tmp_path_factory):
    d = tmp_path_factory.mktemp("img")
    climc(lcluster, "image-create", "--file",
          str(build_image(d / "calm.img", dirty_mb=4)), "live-calm")
    climc(lcluster, "image-create", "--file",
          str(build_image(d / "busy.img", dirty_mb=48)), "live-busy")
    return {"calm": "live-calm", "busy": "live-busy"}


def hosts_ready(client) -> None:
    """Every host registered and online (after a region or agent restart this takes a moment)."""
    until(lambda: all(h.status == resources_pb2.HOST_STATUS_RUNNING
                      and h.host_status == resources_pb2.HOST_HEALTH_ONLINE
                      for h in client.hosts.list()), 60, "every host running and online")


def boot(lcluster, client, name: str, image: str, *args: str) -> resources_pb2.Server:
    hosts_ready(client)
    climc(lcluster, "server-create", "--image", image, *args, "--auto-start", "--wait", name)
    until(lambda: len(heartbeats(client, name)) >= 2, 60, f"heartbeats of {name}")
    return client.servers.get(name)


def other_host(lcluster, host_id: str):
    return next(h for h in lcluster.hosts if h.host_id != host_id)


def wait_in_flight(client, name: str) -> None:
    until(lambda: (s := client.servers.get(name)).HasField("progress")
          and s.progress.phase in ("mirror", "memory"), 60, "the migration to be in flight")


def test_live_migrate_with_wait_keeps_guest_running(lcluster, client, images) -> None:
    server = boot(lcluster, client, "lv-a", images["calm"], "--mem", "64",
                  "--data-disk", "16M:shared", "--data-disk", "16M")
    source = server.host_id
    before = heartbeats(client, "lv-a")[-1]
    t0 = time.monotonic()
    out = climc(lcluster, "server-live-migrate", "--wait", "lv-a").stdout
    wall = time.monotonic() - t0
    m = re.search(r"Live migration done: downtime (\d+) ms, total time ([\d.]+) s", out)
    assert m, out
    print("\n" + out)
    print(f"\nclimc --wait: downtime {m.group(1)} ms, total {m.group(2)} s, wall {wall:.1f} s")
    assert re.search(r"(mirror|memory|completed)\s+\d", out), out  # progress lines were shown
    after = client.servers.get("lv-a")
    assert after.status == RUNNING
    assert after.host_id == other_host(lcluster, source).host_id, "host flipped in the DB"
    assert after.progress.phase == "completed"
    later = until(lambda: (h := heartbeats(client, "lv-a")) and h[-1] > before + 1 and h, 60,
                  "heartbeats on the target")
    assert later[-1] > before
    log = client.servers.serial_log("lv-a", 10000)
    assert not any("FERRY-BOOT" in line for line in log), "no reboot on the target"
    assert server.id not in guest_ids(lcluster.host(source)), "source cleaned up"
    # And back again: nothing left behind blocks it.
    climc(lcluster, "server-live-migrate", "--wait", "lv-a")
    assert client.servers.get("lv-a").host_id == source
    climc(lcluster, "server-delete", "--wait", "lv-a")


def test_cancel_keeps_guest_on_source_and_retry_succeeds(lcluster, client, images) -> None:
    server = boot(lcluster, client, "lv-c", images["busy"], "--mem", "128")
    source, target = server.host_id, other_host(lcluster, server.host_id)
    resp = client.migrations.live_migrate("lv-c", max_bandwidth_mb=1)
    wait_in_flight(client, "lv-c")
    with pytest.raises(Aborted):
        client.migrations.live_migrate("lv-c")
    client.migrations.set_live_migrate_params("lv-c", max_bandwidth_mb=2, downtime_limit_ms=200)
    climc(lcluster, "server-cancel-live-migrate", "lv-c")
    with pytest.raises(TaskFailed):
        client.wait_task(resp.task_id, timeout=60)
    s = client.servers.get("lv-c")
    assert s.status == MIGRATE_FAILED and "cancel" in s.status_reason.lower()
    assert s.host_id == source
    before = heartbeats(client, "lv-c")[-1]
    until(lambda: heartbeats(client, "lv-c")[-1] > before, 30, "heartbeats on the source")
    assert server.id not in guest_ids(target), "target cleaned"

    # Again, keeping the failed target for debugging: it must not block the retry.
    resp = client.migrations.live_migrate("lv-c", max_bandwidth_mb=1,
                                          keep_dest_guest_on_failed=True)
    wait_in_flight(client, "lv-c")
    client.migrations.cancel_live_migrate("lv-c")
    with pytest.raises(TaskFailed):
        client.wait_task(resp.task_id, timeout=60)
    s = client.servers.get("lv-c")
    assert s.status == MIGRATE_FAILED and "kept" in s.status_reason, s.status_reason
    assert server.id in guest_ids(target), "the failed target guest was kept"

    resp = client.migrations.live_migrate("lv-c", quickly_finish=True)
    client.wait_task(resp.task_id, timeout=120)
    s = client.servers.get("lv-c")
    assert s.status == RUNNING and s.host_id == target.host_id
    climc(lcluster, "server-delete", "--wait", "lv-c")


def _kill_incoming_qemu(host, guest_id: str) -> None:
    pidfile = QmpDriver(host.agent_state_dir).paths(guest_id).pidfile
    pid = int(until(lambda: pidfile.exists() and pidfile.read_text().strip(), 30, "target pid"))
    os.kill(pid, signal.SIGKILL)


def test_target_host_lost_mid_migration(lcluster, client, images) -> None:
    server = boot(lcluster, client, "lv-k", images["busy"], "--mem", "128")
    source, target = server.host_id, other_host(lcluster, server.host_id)
    resp = client.migrations.live_migrate("lv-k", max_bandwidth_mb=1,
                                          keep_dest_guest_on_failed=True)
    wait_in_flight(client, "lv-k")
    # Power loss of the target: its agent and its QEMU.
    lcluster.stop_process(target.name, sig=signal.SIGKILL)
    _kill_incoming_qemu(target, server.id)
    try:
        with pytest.raises(TaskFailed):
            client.wait_task(resp.task_id, timeout=120)
        s = client.servers.get("lv-k")
        assert s.status == MIGRATE_FAILED and s.status_reason
        assert s.host_id == source
        before = heartbeats(client, "lv-k")[-1]
        until(lambda: heartbeats(client, "lv-k")[-1] > before, 30, "heartbeats on the source")
    finally:
        lcluster.start_process(target.name)
        lcluster.wait_hosts_online([target.host_id])
    # The stale target (its record and disks) does not block the retry.
    hosts_ready(client)
    resp = client.migrations.live_migrate("lv-k", quickly_finish=True)
    client.wait_task(resp.task_id, timeout=120)
    s = client.servers.get("lv-k")
    assert s.status == RUNNING and s.host_id == target.host_id
    climc(lcluster, "server-delete", "--wait", "lv-k")


def test_bad_input(lcluster, client, images) -> None:
    with pytest.raises(NotFound):
        client.migrations.live_migrate("no-such-server")
    climc(lcluster, "server-create", "--image", images["calm"], "--mem", "64", "--wait", "lv-s")
    with pytest.raises(FailedPrecondition) as e:
        client.migrations.live_migrate("lv-s")
    assert "ready" in str(e.value)
    with pytest.raises(InvalidArgument) as e:
        client.migrations.live_migrate("lv-s", max_bandwidth_mb=-1)
    assert "max_bandwidth_mb" in str(e.value)
    with pytest.raises(FailedPrecondition):
        client.migrations.cancel_live_migrate("lv-s")
    proc = climc(lcluster, "server-live-migrate", "--max-bandwidth-mb", "-5", "lv-s", check=False)
    assert proc.returncode != 0
    climc(lcluster, "server-delete", "--wait", "lv-s")


def test_region_restart_mid_migration_resumes_and_finishes(lcluster, client, images) -> None:
    server = boot(lcluster, client, "lv-r", images["busy"], "--mem", "128")
    source, target = server.host_id, other_host(lcluster, server.host_id)
    resp = client.migrations.live_migrate("lv-r", max_bandwidth_mb=1)
    wait_in_flight(client, "lv-r")
    lcluster.stop_process("region", sig=signal.SIGKILL)
    lcluster.start_process("region")
    # The resumed task re-attaches to the source agent's migration (still in flight).
    until(lambda: client.servers.get("lv-r").status
          == resources_pb2.SERVER_STATUS_LIVE_MIGRATING, 30, "the task to resume")
    until(lambda: (p := client.servers.get("lv-r").progress).phase == "memory"
          and p.updated_at.seconds > 0, 30, "fresh progress after the restart")
    client.migrations.set_live_migrate_params("lv-r", max_bandwidth_mb=0, downtime_limit_ms=1000)
    client.wait_task(resp.task_id, timeout=120)
    s = client.servers.get("lv-r")
    assert s.status == RUNNING and s.host_id == target.host_id
    assert server.id not in guest_ids(lcluster.host(source))
    climc(lcluster, "server-delete", "--wait", "lv-r")


def test_source_agent_restart_mid_migration(lcluster, client, images) -> None:
    server = boot(lcluster, client, "lv-x", images["busy"], "--mem", "128")
    source = lcluster.host(server.host_id)
    resp = client.migrations.live_migrate("lv-x", max_bandwidth_mb=1)
    wait_in_flight(client, "lv-x")
    # The agent dies; its QEMU (still migrating) lives on.
    lcluster.stop_process(source.name, sig=signal.SIGKILL)
    lcluster.start_process(source.name)
    with pytest.raises(TaskFailed):
        client.wait_task(resp.task_id, timeout=120)
    s = client.servers.get("lv-x")
    assert s.status == MIGRATE_FAILED and s.host_id == source.host_id
    before = heartbeats(client, "lv-x")[-1]
    until(lambda: heartbeats(client, "lv-x")[-1] > before, 30, "heartbeats on the source")
    hosts_ready(client)
    resp = client.migrations.live_migrate("lv-x", quickly_finish=True)
    client.wait_task(resp.task_id, timeout=120)
    assert client.servers.get("lv-x").status == RUNNING
    climc(lcluster, "server-delete", "--wait", "lv-x")


def test_tls_live_migration(lcluster, client, images) -> None:
    server = boot(lcluster, client, "lv-t", images["calm"], "--mem", "64", "--data-disk", "16M")
    target = other_host(lcluster, server.host_id)
    out = climc(lcluster, "server-live-migrate", "--enable-tls", "--wait", "lv-t").stdout
    assert "Live migration done" in out, out
    assert client.servers.get("lv-t").host_id == target.host_id
    ca_key = Path(lcluster.plan.region_data) / "ca" / "ca.key"
    assert ca_key.exists(), "the CA (and its key) lives in the region's data folder"
    for h in lcluster.hosts:
        assert not list(Path(h.state_dir).glob("tls/*")), "per-migration certificates removed"
    climc(lcluster, "server-delete", "--wait", "lv-t")
