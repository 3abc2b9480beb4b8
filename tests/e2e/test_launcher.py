"""The one-machine launcher: plan, process identity, failure teardown, and a real cluster up/down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ferry_compose import Cluster, ClusterSpec, ProcessFailed
from ferry_compose.errors import SpecError
from ferry_compose.launcher import build_parser
from ferry_compose.procs import all_pids, is_qemu, read_cmdline, read_stat, spawn
from ferry_compose.spec import plan

CLI = [sys.executable, "-m", "ferry_compose.launcher"]


def _cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _wait_dead(pids: list[int], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if (st := read_stat(p)) is not None and st.state not in "ZX"]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def _qemu_using(folder: Path) -> list[int]:
    needle = str(folder.resolve())
    return [p for p in all_pids() if is_qemu(p) and any(needle in a for a in read_cmdline(p))]


# ---- without the services -------------------------------------------------------------------

def test_plan_fixed_ports_follow_the_architecture_defaults(tmp_path):
    p = plan(ClusterSpec(dir=tmp_path, hosts=3, base_port=7700))
    assert p.region_address == "127.0.0.1:7700"
    assert p.scheduler_address == "127.0.0.1:7710"
    assert p.etcd_address == "127.0.0.1:7730"
    assert [h.address for h in p.hosts] == ["127.0.0.11:7720", "127.0.0.12:7720", "127.0.0.13:7720"]
    assert [h.local_storage for h in p.hosts] == [tmp_path / "hosts" / f"host{i}" / "local" for i in (1, 2, 3)]
    assert p.shared_storage == tmp_path / "shared"


def test_plan_free_ports_are_distinct(tmp_path):
    p = plan(ClusterSpec(dir=tmp_path, hosts=4, base_port=0, accel_per_host=["tcg", "kvm", "auto", "tcg"]))
    ports = [p.etcd_client_port, p.etcd_peer_port, p.region_port, p.scheduler_port]
    assert len(set(ports)) == 4 and all(ports)
    assert [h.accel for h in p.hosts] == ["tcg", "kvm", "auto", "tcg"]
    assert [h.ip for h in p.hosts] == ["127.0.0.11", "127.0.0.12", "127.0.0.13", "127.0.0.14"]


@pytest.mark.parametrize("bad", [
    {"hosts": 0}, {"accel": "xen"}, {"accel_per_host": ["tcg"]}, {"accel_per_host": ["tcg", "hvf", "kvm"]},
    {"base_port": 80}, {"lease_ttl": 0},
])
def test_plan_rejects_bad_specs(tmp_path, bad):
    with pytest.raises(SpecError):
        plan(ClusterSpec(dir=tmp_path, **bad))


def test_cli_parses_the_documented_flags():
    args = build_parser().parse_args(["up", "--dir", "x", "--hosts", "2", "--accel-per-host", "tcg,kvm",
                                      "--base-port", "0"])
    assert (args.command, args.dir, args.hosts, args.accel_per_host, args.base_port) == \
        ("up", Path("x"), 2, ["tcg", "kvm"], 0)
    assert build_parser().parse_args(["status", "--output", "json"]).dir == Path(".cluster")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["up", "--accel-per-host", "tcg,xen"])


def test_process_identity_needs_pid_and_start_time(tmp_path):
    rec, popen = spawn("sleeper", "region", ["sleep", "30"], tmp_path / "s.log", "")
    try:
        assert rec.alive()
        rec.starttime += 1  # same pid, another process: never ours
        assert not rec.alive()
    finally:
        popen.kill()
        popen.wait()


def test_down_stops_recorded_processes_and_only_real_qemu_guests(tmp_path):
    """Fake services and guests: down stops the recorded ones and QEMU named by pid files,
    leaves alone a non-QEMU process whose pid sits in a pid file, and is idempotent."""
    spec = ClusterSpec(dir=tmp_path, hosts=2, base_port=0, stop_timeout=2)
    c = Cluster(spec)
    c.plan = plan(spec)
    c._make_dirs()
    # A "service" that ignores SIGTERM: down must escalate to SIGKILL.
    stubborn = c._spawn("host1", "agent", [sys.executable, "-c",
                                           "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                                           "time.sleep(60)"], "127.0.0.11:1")
    region = c._spawn("region", "region", ["sleep", "60"], "127.0.0.1:1")
    guest = subprocess.Popen(["bash", "-c", "exec -a qemu-system-x86_64 sleep 60"], start_new_session=True)
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        deadline = time.monotonic() + 5
        while not is_qemu(guest.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        for i, pid in enumerate((guest.pid, bystander.pid)):
            d = c.plan.hosts[i].state_dir / "guests" / f"g{i}"
            d.mkdir(parents=True)
            (d / "qemu.pid").write_text(f"{pid}\n")
        c._save()

        again = Cluster(ClusterSpec(dir=tmp_path, stop_timeout=1))  # as `ferry-cluster down` would
        stopped = {r.pid for r in again.down()}
        assert {stubborn.pid, region.pid, guest.pid} <= stopped
        assert bystander.pid not in stopped
        assert guest.wait(timeout=5) == -signal.SIGTERM
        assert bystander.poll() is None
        assert _wait_dead([stubborn.pid, region.pid]) == []
        assert again.down() == []
    finally:
        for p in (guest, bystander):
            p.kill()
            p.wait()
        c.down()


def test_failed_start_tears_down_and_reports_the_log(tmp_path, monkeypatch):
    """A service that dies at start: up raises with its log tail and leaves nothing running."""
    monkeypatch.setattr(Cluster, "_region_argv", lambda self: [
        sys.executable, "-c", "import sys; print('region: cannot open the database (boom)'); sys.exit(3)"])
    c = Cluster(ClusterSpec(dir=tmp_path, hosts=1, base_port=0, ready_timeout=60))
    with pytest.raises(ProcessFailed) as info:
        c.up()
    assert info.value.name == "region"
    assert "code 3" in str(info.value)
    assert "boom" in info.value.log_tail
    etcd = Cluster.attach(tmp_path).process("etcd")
    assert not etcd.alive()
    assert json.loads((tmp_path / "cluster.json").read_text())["state"] == "failed"


def test_up_refuses_a_busy_port(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        c = Cluster(ClusterSpec(dir=tmp_path, hosts=1, base_port=port))  # region would take `port`
        with pytest.raises(SpecError, match="already in use"):
            c.up()
    assert not any(r.alive() for r in c.records)


# ---- with the real services -----------------------------------------------------------------

def test_session_cluster_serves(cluster):
    rows = cluster.status()
    kinds = [r["kind"] for r in rows if r["kind"] != "qemu"]
    assert kinds.count("agent") == 3 and {"etcd", "region", "scheduler"} <= set(kinds)
    for r in rows:
        if r["kind"] == "qemu":
            continue
        assert r["alive"], r
        assert r["health"] in ("SERVING", "healthy"), r
    for i, h in enumerate(cluster.hosts, start=1):
        assert h.ip == f"127.0.0.{10 + i}"
        assert (cluster.dir / "logs" / f"{h.name}.log").is_file()

    proc = _cli("status", "--dir", str(cluster.dir), "--output", "json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["region"] == cluster.region_address
    assert {p["name"] for p in data["processes"]} >= {"etcd", "region", "scheduler", "host1", "host2", "host3"}


@pytest.mark.qemu
@pytest.mark.etcd
def test_cli_up_and_down_leave_no_process_behind(tmp_path, testguest_image):
    """`ferry-cluster up`, a running guest, `ferry-cluster down`: nothing remains, and down is idempotent."""
    from ferry_client import FerryClient

    folder = tmp_path / "c"
    proc = _cli("up", "--dir", str(folder), "--hosts", "2", "--accel", "tcg", "--base-port", "0")
    try:
        assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
        c = Cluster.attach(folder)
        with FerryClient(c.region_address) as fc:
            fc.images.create("tg", testguest_image, timeout=60)
            resp = fc.servers.create("vm-down", "tg", memory_mb=64, auto_start=True)
            fc.wait_task(resp.task_id, timeout=120)
        guests = [int(p.read_text()) for p in folder.glob("hosts/*/state/guests/*/qemu.pid")]
        assert guests and all(is_qemu(p) for p in guests)
        pids = [r.pid for r in c.records] + guests
    finally:
        down = _cli("down", "--dir", str(folder))
    assert down.returncode == 0, down.stderr
    assert _wait_dead(pids) == [], "processes left after down"
    assert _qemu_using(folder) == []
    again = _cli("down", "--dir", str(folder))
    assert again.returncode == 0 and "nothing was running" in again.stdout
    status = _cli("status", "--dir", str(folder), "--output", "json")
    assert status.returncode == 3
    assert not any(p["alive"] for p in json.loads(status.stdout)["processes"])


def test_restart_one_process(make_cluster):
    """stop_process/start_process, as fault tests use them: the agent comes back and re-registers."""
    c = make_cluster(hosts=1)
    c.stop_process("host1", signal.SIGKILL)
    assert not c.process("host1").alive()
    c.start_process("host1")
    c.wait_hosts_online(timeout=60)
    assert all(r["alive"] for r in c.status() if r["kind"] != "qemu")
    assert os.path.exists(c.process("host1").log)


def test_long_folder_gets_short_state_links(tmp_path):
    """QMP sockets must fit the 107-byte unix path limit: a long cluster folder gets short
    symlinks in /tmp for the agents' --state-dir, removed again by down."""
    deep = tmp_path / ("x" * 60)
    spec = ClusterSpec(dir=deep, hosts=2, base_port=0)
    p = plan(spec)
    assert p.link_root is not None and len(str(p.link_root)) < 30
    for h in p.hosts:
        assert len(str(h.agent_state_dir)) + len("/guests/") + 36 + len("/qmp.sock") <= 107
    c = Cluster(spec)
    c.plan = p
    c._make_dirs()
    for h in p.hosts:
        assert h.agent_state_dir.resolve() == h.state_dir.resolve()
    c._save()
    Cluster(ClusterSpec(dir=deep)).down()
    assert not p.link_root.exists()
    short = plan(ClusterSpec(dir=Path("/tmp/fc"), hosts=3, base_port=0))
    assert short.link_root is None and short.hosts[0].agent_state_dir == short.hosts[0].state_dir
