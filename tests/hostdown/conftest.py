"""Host-down tests: a private cluster with health keepers, short leases and a short window.

Timings (seconds): lease TTL 4, fencing deadline 2.5, confirmation window 3.
Every test watches /proc the whole time: no two QEMU processes may ever run the
same server (`DoubleRunMonitor`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path

import pytest
from helpers import until as poll_until
from ferry_host.testguest.build import build_image

TTL = 4
FENCE_AFTER = 2.5
WINDOW = 3.0


def qemu_by_server(roots: tuple[str, ...] = ()) -> dict[str, list[int]]:
    """server id -> pids of QEMU processes with `-name guest=<id>,...`, from /proc; with
    `roots`, only those whose command line names a path under one of them (our cluster:
    other tests on this machine may run their own guests)."""
    found: dict[str, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or not os.path.basename(argv[0]).startswith(b"qemu-system"):
            continue
        if roots and not any(r.encode() in a for a in argv for r in roots):
            continue
        for a, b in pairwise(argv):
            if a == b"-name" and b.startswith(b"guest="):
                sid = b[len(b"guest="):].split(b",")[0].decode()
                found.setdefault(sid, []).append(int(entry))
    return found


def _describe(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ppid = stat.rsplit(")", 1)[1].split()[1]
        state = stat.rsplit(")", 1)[1].split()[0]
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        extra = b" ".join(argv[i + 1] for i, a in enumerate(argv[:-1]) if a in (b"-pidfile", b"-incoming"))
        parent = Path(f"/proc/{ppid}/cmdline").read_bytes().replace(b"\0", b" ")[:150]
        return f"{pid} (ppid {ppid}, {state}, {extra.decode()}, parent {parent.decode()})"
    except OSError:
        return f"{pid} (gone)"


def cluster_roots(cluster) -> tuple[str, ...]:
    roots = [str(cluster.plan.dir)]
    if cluster.plan.link_root is not None:
        roots.append(str(cluster.plan.link_root))
    return tuple(roots)


class DoubleRunMonitor:
    """Samples /proc every 20 ms in a thread; `check()` fails if a server ever ran twice."""

    def __init__(self, cluster) -> None:
        self.roots = cluster_roots(cluster)
        self.violations: list[tuple[float, str, list[int]]] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for sid, pids in qemu_by_server(self.roots).items():
                if len(pids) > 1:
                    self.violations.append((time.time(), sid, [_describe(p) for p in pids]))
            self.samples += 1
            self._stop.wait(0.02)

    def __enter__(self) -> DoubleRunMonitor:  # noqa: PYI034
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def check(self) -> None:
        assert self.samples > 10
        assert not self.violations, f"a server ran twice: {self.violations[:5]}"


def until(pred: Callable, timeout: float, what: str, interval: float = 0.1):
    return poll_until(pred, timeout, what, interval)


def incidents(cluster, host_id: str | None = None) -> list[dict]:
    """Rows of host_down_incidents in the cluster's region database."""
    db = cluster.plan.region_data / "region.db"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        con.row_factory = sqlite3.Row
        q = "SELECT * FROM host_down_incidents"
        rows = con.execute(q + (" WHERE host_id = ?" if host_id else ""),
                           (host_id,) if host_id else ()).fetchall()
        return [dict(r) for r in rows]
    finally:
        con.close()


def guest_pids(cluster, host_name: str) -> dict[str, int]:
    """server id -> QEMU pid of the guests running on one host (from its pidfiles)."""
    h = cluster.host(host_name)
    out = {}
    for pidfile in (h.state_dir / "guests").glob("*/qemu.pid"):
        sid = pidfile.parent.name
        pids = qemu_by_server(cluster_roots(cluster)).get(sid, [])
        if pids:
            out[sid] = pids[0]
    return out


def kill_host(cluster, host_name: str) -> None:
    """Power loss: SIGKILL of the keeper, the agent and every QEMU of the host."""
    pids = guest_pids(cluster, host_name)
    for name in (f"{host_name}-health", host_name):
        cluster.stop_process(name, signal.SIGKILL)
    for pid in pids.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def cut_off(ip: str) -> Iterator[None]:
    """Drops every packet to the host's own loopback address (agent and its etcd path)."""
    rule = ["INPUT", "-d", ip, "-j", "DROP"]
    subprocess.run(["iptables", "-I", *rule], check=True, timeout=10)
    try:
        yield
    finally:
        subprocess.run(["iptables", "-D", *rule], check=False, timeout=10)


@pytest.fixture(scope="module")
def hd_image(tmp_path_factory) -> Path:
    return build_image(tmp_path_factory.mktemp("hdimg") / "guest.img", dirty_mb=1)


@pytest.fixture
def hd_cluster(make_cluster, hd_image):
    """(cluster, client): 2 hosts with keepers, TTL 4 s, fencing 2.5 s, window 3 s, image loaded."""
    from ferry_client import FerryClient

    c = make_cluster(hosts=2, lease_ttl=TTL, fence_after=FENCE_AFTER, host_down_window=WINDOW)
    client = FerryClient(c.region_address)
    client.images.create("hd-guest", hd_image)
    try:
        yield c, client
    finally:
        client.close()


def make_guest(client, name: str, host: str, storage: str = "shared") -> str:
    resp = client.servers.create(name, "hd-guest", memory_mb=64, storage=storage,
                                 prefer_host=host, auto_start=True)
    client.wait_task(resp.task_id, timeout=60)
    srv = client.servers.get(name)
    assert srv.host_id == host and srv.status == 9, srv  # running
    return srv.id
