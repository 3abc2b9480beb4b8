"""The health keeper against a real etcd: renews, survives nothing, fences when overdue."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path

import pytest
from ferry_host.health.fence import fence_guests, shared_only
from ferry_host.health.keeper import HealthKeeper, KeeperConfig

pytestmark = [pytest.mark.etcd]


def _guest(state: Path, gid: str, storage: str) -> Path:
    folder = state / "guests" / gid
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text(json.dumps({"version": 1, "spec": {
        "guest_id": gid, "name": gid, "vcpu_count": 1, "memory_mb": 64,
        "disks": [{"disk_id": f"d-{gid}", "index": 0, "storage_id": storage, "size_mb": 1}]}}))
    return folder


def test_shared_only() -> None:
    assert shared_only({"disks": [{"storage_id": "shared0", "disk_id": "a"}]}, "shared0", None)
    assert not shared_only({"disks": [{"storage_id": "shared0", "disk_id": "a"},
                                      {"storage_id": "h-local", "disk_id": "b"}]}, "shared0", None)
    assert not shared_only({"disks": []}, "shared0", None)


def test_fence_kills_only_our_shared_qemu(tmp_path: Path) -> None:
    state = tmp_path / "state"
    shared = _guest(state, "g-shared", "shared0")
    local = _guest(state, "g-local", "h1-local")
    stranger = _guest(state, "g-stranger", "shared0")
    # A process that is not our QEMU, named in a pidfile: must never be killed.
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        (stranger / "qemu.pid").write_text(str(sleeper.pid))
        (shared / "qemu.pid").write_text("999999999")  # gone
        results = {r.guest_id: r.outcome for r in fence_guests(state, "shared0", None, "test")}
        assert results == {"g-shared": "not running", "g-local": "skipped (local disks)",
                           "g-stranger": "not running"}
        assert sleeper.poll() is None
        assert (state / "health" / "fence.log").read_text().count("\n") == 1
        assert not (local / "fenced.json").exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_keeper_fences_when_etcd_is_gone_and_again_after_a_restart(etcd_server, tmp_path) -> None:
    state = tmp_path / "state"
    _guest(state, "g1", "shared0")

    async def run() -> tuple[float, int]:
        keeper = HealthKeeper(KeeperConfig(host_id="hk1", etcd=etcd_server.endpoint,
                                           state_dir=state, lease_ttl=3, fence_after=1.5))
        await keeper.start()
        await keeper.lease.wait_held(10)
        etcd_server.stop()
        t0 = time.monotonic()
        try:
            while not keeper.fences and time.monotonic() - t0 < 10:
                await asyncio.sleep(0.05)
            took = time.monotonic() - t0
        finally:
            etcd_server.start()
        await keeper.lease.wait_held(15)
        n = len(keeper.fences)
        await keeper.stop(revoke=True)
        return took, n

    took, n = asyncio.run(run())
    assert n == 1 and took < 1.5 + 1.0
    # A keeper that starts long after the last renewal fences at once (it was not watching).
    record = state / "health" / "keeper.json"
    data = json.loads(record.read_text())
    data["last_renewed"] -= 60
    record.write_text(json.dumps(data))

    async def restart() -> int:
        keeper = HealthKeeper(KeeperConfig(host_id="hk1", etcd=etcd_server.endpoint,
                                           state_dir=state, lease_ttl=3, fence_after=1.5))
        await keeper.start()
        n = len(keeper.fences)
        await keeper.stop()
        return n

    assert asyncio.run(restart()) == 1
