"""Host health from a real etcd: put -> online, delete/expiry -> offline, initial
read at start, and no mass offline when etcd itself goes away."""

from __future__ import annotations

import uuid

import aetcd
import pytest

from ferry_proto.region.v1 import host_service_pb2 as hpb
from ferry_proto.region.v1 import resources_pb2 as r
from ferry_region.etcd_watcher import PREFIX, LinkState

from .conftest import Env, _close_env, poll
from .fakes import serve_scheduler

pytestmark = pytest.mark.etcd


def key(host_id: str) -> bytes:
    return PREFIX + host_id.encode()


async def health(env: Env, host_id: str) -> int:
    return (await env.hosts.GetHost(hpb.GetHostRequest(id=host_id))).host.host_status


@pytest.fixture
async def etcd_env(etcd_server, sqlite_url, region_factory, tmp_path):
    sched = await serve_scheduler()
    region = await region_factory(db_url=sqlite_url, scheduler=sched.address,
                                  etcd=etcd_server.endpoint)
    env = Env(region, sched, tmp_path)
    env.region_factory, env.db_url = region_factory, sqlite_url
    client = aetcd.Client(host=etcd_server.host, port=etcd_server.port, timeout=5)
    env.etcd = client
    env.etcd_server = etcd_server
    await region.watcher.wait_synced(10)
    yield env
    try:
        await client.delete_prefix(PREFIX + b"et-")
    finally:
        await client.close()
        await _close_env(env)


async def test_put_delete_and_expiry(etcd_env):
    env = etcd_env
    h1, h2 = f"et-{uuid.uuid4().hex[:6]}", f"et-{uuid.uuid4().hex[:6]}"
    for h in (h1, h2):
        await env.registry.RegisterHost(env.register_request(h, "127.0.0.1:9"))
        # Synced with etcd and no key yet: offline, even though the agent registered.
        assert await health(env, h) == r.HOST_HEALTH_OFFLINE

    await env.etcd.put(key(h1), b'{"address": "127.0.0.1:9"}')
    await poll(lambda: _is(env, h1, r.HOST_HEALTH_ONLINE), 10, what="h1 online")
    await env.etcd.delete(key(h1))
    await poll(lambda: _is(env, h1, r.HOST_HEALTH_OFFLINE), 10, what="h1 offline")

    lease = await env.etcd.lease(2)
    await env.etcd.put(key(h2), b"{}", lease=lease)
    await poll(lambda: _is(env, h2, r.HOST_HEALTH_ONLINE), 10, what="h2 online")
    await poll(lambda: _is(env, h2, r.HOST_HEALTH_OFFLINE), 15, what="h2 offline on expiry")


async def _is(env, host_id, want):
    return await health(env, host_id) == want


async def test_current_keys_are_read_at_start(etcd_env):
    env = etcd_env
    h = f"et-{uuid.uuid4().hex[:6]}"
    await env.registry.RegisterHost(env.register_request(h, "127.0.0.1:9"))
    await env.region.stop()
    await env.etcd.put(key(h), b"{}")  # appears while the region is down
    region = await env.region_factory(db_url=env.db_url, scheduler=env.scheduler.address,
                                      etcd=env.etcd_server.endpoint)
    await env.reconnect(region)
    await region.watcher.wait_synced(10)
    assert await health(env, h) == r.HOST_HEALTH_ONLINE
    assert region.watcher.health_of(h) is not None


async def test_etcd_down_does_not_mark_hosts_offline(etcd_env):
    env = etcd_env
    watcher = env.region.watcher
    h = f"et-{uuid.uuid4().hex[:6]}"
    await env.registry.RegisterHost(env.register_request(h, "127.0.0.1:9"))
    await env.etcd.put(key(h), b"{}")
    await poll(lambda: _is(env, h, r.HOST_HEALTH_ONLINE), 10, what="online")
    syncs = watcher.syncs
    env.etcd_server.stop()
    try:
        await poll(lambda: watcher.link.state != LinkState.SYNCED, 20, what="watch noticed")
        assert await health(env, h) == r.HOST_HEALTH_ONLINE
        # While etcd is unknown a registration keeps the host online.
        await env.registry.RegisterHost(env.register_request(h, "127.0.0.1:9"))
        assert await health(env, h) == r.HOST_HEALTH_ONLINE
    finally:
        env.etcd_server.start()
    await poll(lambda: watcher.syncs > syncs, 30, what="resynced after etcd came back")
    assert await health(env, h) == r.HOST_HEALTH_ONLINE
    # And the watch works again.
    await env.etcd.delete(key(h))
    await poll(lambda: _is(env, h, r.HOST_HEALTH_OFFLINE), 10, what="offline after delete")
