"""Batch cold migration: every stopped server off one host, bounded in flight; per-server results."""

from __future__ import annotations

import threading
import time

import pytest
from ferry_proto.region.v1 import resources_pb2 as rpb

from .conftest import climc, qemu_io

pytestmark = [pytest.mark.qemu, pytest.mark.etcd]


def test_drain_a_host_one_at_a_time(ccluster, cclient, cimage) -> None:
    host = ccluster.hosts[0]
    names = [f"cm-batch{i}" for i in range(3)]
    for n in names:
        climc(ccluster, "server-create", "--image", cimage, "--mem", "64", "--data-disk", "32M",
              "--prefer-host", host.host_id, "--wait", n)
        data = sorted(cclient.servers.get(n).disks, key=lambda d: d.index)[1]
        qemu_io(data.path, "write -P 0x11 0 8M")

    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            moving = sum(cclient.servers.get(n).status == rpb.SERVER_STATUS_MIGRATING
                         for n in names)
            peak[0] = max(peak[0], moving)
            time.sleep(0.05)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        out = climc(ccluster, "servers-migrate", "--source-host", host.name, "--max-in-flight",
                    "1", "--wait")
    finally:
        stop.set()
        t.join(5)
    for n in names:
        assert n in out.stdout
        s = cclient.servers.get(n)
        assert s.status == rpb.SERVER_STATUS_READY and s.host_id != host.host_id
    assert out.stdout.count(" ok") >= 3
    assert peak[0] == 1, f"at most one migration in flight per host, saw {peak[0]}"

    # Explicit ids: a bad one is reported, the others move.
    resp = cclient.migrations.migrate_many([names[0], "no-such-server"],
                                           prefer_host=host.host_id, auto_start=True)
    by = {r.server_name or r.server_id: r for r in resp.results}
    assert by["no-such-server"].error_reason.endswith("NOT_FOUND") and not by["no-such-server"].task_id
    cclient.wait_task(by[names[0]].task_id, timeout=120)
    s = cclient.servers.get(names[0])
    assert s.host_id == host.host_id and s.status == rpb.SERVER_STATUS_RUNNING
    for n in names:
        climc(ccluster, "server-delete", "--wait", n)
