"""Host registration, listing and the WatchHosts feed."""

from __future__ import annotations

import asyncio

from ferry_proto.region.v1 import host_service_pb2 as hpb
from ferry_proto.region.v1 import registry_service_pb2 as rpb
from ferry_proto.region.v1 import resources_pb2 as r
from ferry_proto.region.v1 import server_service_pb2 as spb

from .conftest import poll


async def test_register_upserts_and_shares_storages(bare_env):
    e = bare_env
    resp = await e.registry.RegisterHost(e.register_request("h1", "127.0.0.11:7720"))
    assert resp.host.status == r.HOST_STATUS_RUNNING
    assert resp.host.host_status == r.HOST_HEALTH_ONLINE  # no etcd watcher: alive by registering
    assert resp.refresh_interval_seconds == 30
    await e.registry.RegisterHost(e.register_request("h2", "127.0.0.12:7720"))

    # Re-registration updates facts and drops storages/networks no longer reported.
    req = e.register_request("h1", "127.0.0.21:7720", kernel_version="6.2.0")
    del req.storages[0]
    req.networks[:] = ["net0", "net1"]
    h1 = (await e.registry.RegisterHost(req)).host
    assert h1.access_address == "127.0.0.21:7720" and h1.kernel_version == "6.2.0"
    assert [s.storage_id for s in h1.storages] == ["shared0"]
    assert list(h1.networks) == ["net0", "net1"]

    hosts = (await e.hosts.ListHosts(hpb.ListHostsRequest())).hosts
    assert [h.id for h in hosts] == ["h1", "h2"]
    h2 = hosts[1]
    assert {s.storage_id for s in h2.storages} == {"h2-local", "shared0"}
    shared = [s for s in h2.storages if s.storage_id == "shared0"][0]
    assert shared.kind == r.STORAGE_KIND_SHARED and shared.path == "/srv/shared"
    assert h2.cpu_model == "Fake CPU" and h2.accelerator == r.ACCELERATOR_TCG
    assert e.counts()["storages"] == 3  # h1-local, h2-local, shared0 (one row for both hosts)


async def test_list_filters_and_get_by_name(bare_env):
    e = bare_env
    for hid in ("alpha", "beta"):
        await e.registry.RegisterHost(e.register_request(hid, "127.0.0.1:9", name=f"kvm-{hid}"))
    got = (await e.hosts.ListHosts(hpb.ListHostsRequest(hypervisor="kvm"))).hosts
    assert [h.name for h in got] == ["kvm-alpha", "kvm-beta"]
    assert (await e.hosts.ListHosts(hpb.ListHostsRequest(hypervisor="esxi"))).hosts == []
    got = (await e.hosts.ListHosts(hpb.ListHostsRequest(search="BET"))).hosts
    assert [h.id for h in got] == ["beta"]
    got = (await e.hosts.ListHosts(hpb.ListHostsRequest(search="alpha"))).hosts
    assert [h.id for h in got] == ["alpha"]
    assert (await e.hosts.GetHost(hpb.GetHostRequest(id="kvm-beta"))).host.id == "beta"
    assert (await e.hosts.GetHost(hpb.GetHostRequest(id="beta"))).host.name == "kvm-beta"


async def test_assignments_for_reported_guests(env):
    resp = await env.servers.CreateServer(env.create_request("mine"))
    await env.wait_task(resp.task_id)
    sid = resp.server.id
    req = env.register_request("h1", env.agents["h1"].address)
    req.guests.extend([rpb.GuestReport(server_id=sid, running=False),
                       rpb.GuestReport(server_id="stray-guest", running=True)])
    out = await env.registry.RegisterHost(req)
    assert {a.server_id: a.placed_here for a in out.assignments} == {sid: True,
                                                                     "stray-guest": False}
    assert out.host.server_count == 1 and out.host.cpu_used == 1 and out.host.mem_used_mb == 64


async def test_watch_hosts_snapshot_then_changes(env):
    call = env.hosts.WatchHosts(hpb.WatchHostsRequest())
    first = await asyncio.wait_for(call.read(), 10)
    assert first.snapshot and [h.id for h in first.hosts] == ["h1"]

    # A registration is published.
    await env.registry.RegisterHost(env.register_request("h1", env.agents["h1"].address,
                                                         kernel_version="9.9"))
    msg = await asyncio.wait_for(call.read(), 10)
    assert not msg.snapshot and msg.hosts[0].kernel_version == "9.9"

    # A placement changes the usage and is published too.
    resp = await env.servers.CreateServer(env.create_request("w1", memory_mb=128))
    await env.wait_task(resp.task_id)

    async def usage_seen():
        m = await asyncio.wait_for(call.read(), 10)
        return any(h.id == "h1" and h.mem_used_mb == 128 for h in m.hosts)
    await poll(usage_seen, 10, what="usage change on the watch")

    d = await env.servers.DeleteServer(spb.DeleteServerRequest(id="w1"))
    await env.wait_task(d.task_id)

    async def usage_back():
        m = await asyncio.wait_for(call.read(), 10)
        return any(h.id == "h1" and h.server_count == 0 for h in m.hosts)
    await poll(usage_back, 10, what="usage back to 0")
    call.cancel()
    await poll(lambda: env.region.hosts.events.subscriber_count == 0, 10,
               what="watch unsubscribed after cancel")


async def test_hosts_are_ready_until_they_register_again(env):
    tmp_url = env.db_url
    await env.region.stop()
    region = await env.region_factory(db_url=tmp_url, scheduler=env.scheduler.address)
    await env.reconnect(region)
    h = (await env.hosts.GetHost(hpb.GetHostRequest(id="h1"))).host
    assert h.status == r.HOST_STATUS_READY
    await env.registry.RegisterHost(env.register_request("h1", env.agents["h1"].address))
    h = (await env.hosts.GetHost(hpb.GetHostRequest(id="h1"))).host
    assert h.status == r.HOST_STATUS_RUNNING
