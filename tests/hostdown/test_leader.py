"""Leader election among region replicas (real etcd)."""

from __future__ import annotations

import asyncio
import time

import pytest
from ferry_region.hostdown_leader import Elector

pytestmark = [pytest.mark.etcd]


async def _until(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_one_replica_leads_and_another_takes_over(etcd_server) -> None:
    async def run() -> None:
        a, b = Elector(etcd_server.endpoint, "a", ttl=3), Elector(etcd_server.endpoint, "b", ttl=3)
        a.start()
        await _until(lambda: a.is_leader, 10, "a to lead")
        b.start()
        for _ in range(20):  # 1 s: b never leads while a does
            assert a.is_leader and not b.is_leader
            await asyncio.sleep(0.05)
        await a.stop()  # steps down (revokes): b takes over within a retry interval
        await _until(lambda: b.is_leader, 5, "b to take over")
        assert not a.is_leader
        await b.stop()
    asyncio.run(run())


def test_a_leader_cut_from_etcd_steps_down_before_its_key_expires(etcd_server) -> None:
    async def run() -> None:
        a = Elector(etcd_server.endpoint, "a", ttl=3)
        a.start()
        await _until(lambda: a.is_leader, 10, "a to lead")
        etcd_server.stop()
        t0 = time.monotonic()
        try:
            await _until(lambda: not a.is_leader, 5, "a to step down")
            assert time.monotonic() - t0 < 3  # before the TTL, when another could win
        finally:
            etcd_server.start()
        await _until(lambda: a.is_leader, 15, "a to lead again")
        await a.stop()
    asyncio.run(run())
