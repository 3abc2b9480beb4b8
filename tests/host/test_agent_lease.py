"""The etcd health lease against a real etcd: appears, survives faults, revoked on stop."""

from __future__ import annotations

import asyncio
import json
import time

import aetcd
import pytest

from ferry_host.lease import HealthLease, LeaseState, health_key, health_value

pytestmark = pytest.mark.etcd

TTL = 2


@pytest.fixture
async def etcd(etcd_server):
    client = aetcd.Client(host=etcd_server.host, port=etcd_server.port, timeout=2)
    yield client
    await client.close()


async def _get(etcd_server, key: str):
    # A fresh client each time: the server may have restarted in between.
    async with aetcd.Client(host=etcd_server.host, port=etcd_server.port, timeout=2) as c:
        return await c.get(key.encode())


async def _until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.1)


def _key_present(etcd_server, key):
    async def check():
        try:
            return await _get(etcd_server, key)
        except aetcd.ClientError:
            return None
    return check


async def test_key_appears_with_value_and_is_revoked_on_close(etcd_server):
    lease = HealthLease(etcd_server.endpoint, "lease-a", TTL,
                        health_value("lease-a", lambda: "127.0.0.11:7720"))
    lease.start()
    try:
        await lease.wait_held(10)
        got = await _until(_key_present(etcd_server, lease.key), 5, "the health key")
        value = json.loads(got.value)
        assert value["host_id"] == "lease-a" and value["address"] == "127.0.0.11:7720"
        assert got.key == health_key("lease-a").encode() == b"/onecloud/kvm/host/health/lease-a"
        # Refreshed every ttl/3: still there after several TTLs.
        await asyncio.sleep(TTL * 2)
        assert await _get(etcd_server, lease.key) is not None
        assert lease.grants == 1 and lease.state is LeaseState.HELD
    finally:
        await lease.close()
    assert lease.state is LeaseState.CLOSED
    assert await _get(etcd_server, lease.key) is None  # at once, not after the TTL
    await lease.close()  # idempotent


async def test_lease_revoked_behind_our_back_is_granted_again(etcd_server, etcd):
    lease = HealthLease(etcd_server.endpoint, "lease-b", TTL, lambda: {"host_id": "lease-b"})
    lease.start()
    try:
        await lease.wait_held(10)
        first = lease.lease_id
        await etcd.revoke_lease(first)
        assert await _get(etcd_server, lease.key) is None
        await _until(_key_present(etcd_server, lease.key), 10, "the key to come back")
        assert lease.lease_id != first and lease.grants >= 2
    finally:
        await lease.close()


@pytest.mark.parametrize("wipe", [False, True], ids=["restart", "restart-wiped"])
async def test_key_comes_back_after_etcd_restarts(etcd_server, wipe):
    lease = HealthLease(etcd_server.endpoint, f"lease-c-{wipe}", TTL,
                        lambda: {"host_id": "lease-c"})
    lease.start()
    try:
        await lease.wait_held(10)
        # Down for longer than the TTL: the agent sees the loss and keeps retrying.
        await asyncio.to_thread(etcd_server.restart, wipe=wipe, down_for=TTL + 0.5)
        await _until(_key_present(etcd_server, lease.key), 15, "the key after the restart")
        await asyncio.wait_for(lease.wait_held(15), 16)
        assert lease.state is LeaseState.HELD
        if wipe:
            assert lease.grants >= 2  # a new lease: the old one died with the data
    finally:
        await lease.close()
    assert await _get(etcd_server, lease.key) is None


async def test_etcd_down_at_start_is_retried(etcd_server):
    await asyncio.to_thread(etcd_server.stop)
    lease = HealthLease(etcd_server.endpoint, "lease-d", TTL, lambda: {"host_id": "lease-d"})
    lease.start()
    try:
        await asyncio.sleep(1.0)
        assert lease.state in (LeaseState.LOST, LeaseState.GRANTING)
        assert lease.last_error is not None  # visible, not swallowed
        await asyncio.to_thread(etcd_server.start)
        await lease.wait_held(15)
        assert await _get(etcd_server, lease.key) is not None
    finally:
        if not etcd_server.running:
            await asyncio.to_thread(etcd_server.start)
        await lease.close()
