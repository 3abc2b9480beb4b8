"""ServerService against a real grpc.aio region (fake scheduler and host agent)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from ferry_common.errors import error_info
from ferry_proto.region.v1 import resources_pb2 as r
from ferry_proto.region.v1 import server_service_pb2 as spb
from ferry_proto.region.v1 import task_service_pb2 as tpb
from ferry_proto.scheduler.v1 import scheduler_pb2

from .conftest import poll


async def test_lifecycle_create_start_stop_delete(env):
    agent = env.agents["h1"].servicer
    resp = await env.servers.CreateServer(env.create_request("vm1", networks=["net0"],
                                                             data_disks=[spb.DiskRequest(size_mb=100)]))
    assert resp.task_id and resp.server.name == "vm1"
    task = await env.wait_task(resp.task_id)
    assert task.state == r.TASK_STATE_SUCCEEDED, task
    assert list(task.history) == ["schedule", "prepare_disks", "done"]
    s = await env.server("vm1")
    assert s.status == r.SERVER_STATUS_READY and s.host_id == "h1" and s.host_name == "name-h1"
    assert s.task_id == ""
    assert [d.storage_id for d in s.disks] == ["h1-local", "h1-local"]
    assert s.disks[0].path.endswith(".qcow2") and s.disks[0].image_id
    assert s.disks[0].size_mb == 1 and s.disks[1].size_mb == 100
    assert s.networks[0].network == "net0" and s.networks[0].mac.startswith("52:54:")
    # The region told the agent where to download images from, and the spec is complete.
    assert agent.last_region_address == env.region.address
    spec = agent.guests[s.id].spec
    assert spec.disks[0].image_checksum_sha256 and spec.disks[0].image_format == "raw"
    assert env.fake_scheduler.confirmed, "reservation confirmed"
    req = env.fake_scheduler.selects[-1]
    assert req.requirements.vcpu_count == 1 and len(req.requirements.disks) == 2

    st = await env.servers.StartServer(spb.StartServerRequest(id="vm1"))
    assert st.server.status == r.SERVER_STATUS_STARTING and st.server.task_id == st.task_id
    assert (await env.wait_task(st.task_id)).state == r.TASK_STATE_SUCCEEDED
    assert (await env.server(s.id)).status == r.SERVER_STATUS_RUNNING

    sp = await env.servers.StopServer(spb.StopServerRequest(id=s.id, force=True))
    assert (await env.wait_task(sp.task_id)).state == r.TASK_STATE_SUCCEEDED
    assert (await env.server(s.id)).status == r.SERVER_STATUS_READY

    # Stopping a stopped server names its state.
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await env.servers.StopServer(spb.StopServerRequest(id=s.id))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(exc.value).metadata["state"] == "ready"

    d = await env.servers.DeleteServer(spb.DeleteServerRequest(id="vm1"))
    assert d.server.status == r.SERVER_STATUS_DELETING
    t = await env.wait_task(d.task_id)
    assert t.state == r.TASK_STATE_SUCCEEDED
    assert list(t.history) == ["stop_guest", "delete_guest", "delete_rows", "done"]
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await env.server(s.id)
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    assert s.id not in agent.guests
    # The deleted server's tasks stay listable by its id.
    tasks = (await env.tasks.ListTasks(tpb.ListTasksRequest(server=s.id))).tasks
    assert [x.kind for x in tasks][:1] == [r.TASK_KIND_SERVER_DELETE] and len(tasks) == 4


async def test_auto_start_runs_the_server(env):
    resp = await env.servers.CreateServer(env.create_request("auto", auto_start=True))
    task = await env.wait_task(resp.task_id)
    assert list(task.history) == ["schedule", "prepare_disks", "start", "done"]
    assert (await env.server("auto")).status == r.SERVER_STATUS_RUNNING
    # Delete of a running server stops it first.
    d = await env.servers.DeleteServer(spb.DeleteServerRequest(id="auto"))
    await env.wait_task(d.task_id)
    calls = [c for c, _ in env.agents["h1"].servicer.calls]
    assert calls.index("StopGuest") < calls.index("DeleteGuest")


async def test_no_capacity_returns_every_rejection(env):
    env.fake_scheduler.reject = [
        scheduler_pb2.RejectedHost(host_id="h1", host_name="name-h1", rejections=[
            scheduler_pb2.Rejection(filter="memory", reason="INSUFFICIENT_MEMORY",
                                    message="needs 64 MiB, 10 free")]),
        scheduler_pb2.RejectedHost(host_id="h2", host_name="name-h2", rejections=[
            scheduler_pb2.Rejection(filter="status", reason="HOST_OFFLINE", message="offline")]),
    ]
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await env.servers.CreateServer(env.create_request("big"))
    e = exc.value
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "INSUFFICIENT_MEMORY" in e.details() and "name-h2" in e.details()
    from ferry_common.errors import status_from_rpc_error
    st = status_from_rpc_error(e)
    rejected = []
    for a in st.details:
        if a.Is(scheduler_pb2.RejectedHost.DESCRIPTOR):
            m = scheduler_pb2.RejectedHost()
            a.Unpack(m)
            rejected.append(m.host_id)
    assert rejected == ["h1", "h2"]
    info = error_info(e)
    assert info.metadata["task_id"] and info.metadata["server_id"]
    t = await env.wait_task(info.metadata["task_id"])
    assert t.state == r.TASK_STATE_FAILED and t.error_reason == "NO_CAPACITY"
    s = await env.server("big")
    assert s.status == r.SERVER_STATUS_SCHED_FAIL and "INSUFFICIENT_MEMORY" in s.status_reason
    assert s.host_id == "" and s.task_id == ""
    # A sched_fail server can be deleted.
    env.fake_scheduler.reject = None
    d = await env.servers.DeleteServer(spb.DeleteServerRequest(id="big"))
    t = await env.wait_task(d.task_id)
    assert t.state == r.TASK_STATE_SUCCEEDED and list(t.history) == ["stop_guest", "delete_rows",
                                                                     "done"]


async def test_list_search_paging_scope_details(env_any):
    env = env_any
    await env.add_host("h2")
    env.fake_scheduler.hosts = [("h2", "name-h2")]
    ids = {}
    for i, (name, project) in enumerate([("web-1", ""), ("web-2", ""), ("db-1", "other"),
                                         ("web-3", "other"), ("cache", "")]):
        if i == 3:
            env.fake_scheduler.hosts = [("h1", "name-h1")]
        resp = await env.servers.CreateServer(env.create_request(name, project=project))
        ids[name] = resp.server.id
        await env.wait_task(resp.task_id)

    async def names(**kw):
        resp = await env.servers.ListServers(spb.ListServersRequest(**kw))
        return [s.name for s in resp.servers], resp

    got, resp = await names()
    assert got == ["cache", "web-1", "web-2"] and resp.total_size == 3
    assert not resp.servers[0].disks, "no details unless asked"
    got, resp = await names(scope=spb.LIST_SCOPE_SYSTEM)
    assert got == ["cache", "db-1", "web-1", "web-2", "web-3"] and resp.total_size == 5
    got, _ = await names(project="other")
    assert got == ["db-1", "web-3"]
    got, _ = await names(search="WEB", scope=spb.LIST_SCOPE_SYSTEM)
    assert got == ["web-1", "web-2", "web-3"]
    got, _ = await names(search=ids["db-1"], scope=spb.LIST_SCOPE_SYSTEM)
    assert got == ["db-1"]
    got, _ = await names(search="%", scope=spb.LIST_SCOPE_SYSTEM)
    assert got == [], "LIKE wildcards are literal"
    got, _ = await names(host="name-h1", scope=spb.LIST_SCOPE_SYSTEM)
    assert got == ["cache", "web-3"]
    got, _ = await names(host="h2", scope=spb.LIST_SCOPE_SYSTEM, status=r.SERVER_STATUS_READY)
    assert got == ["db-1", "web-1", "web-2"]
    got, _ = await names(status=r.SERVER_STATUS_RUNNING, scope=spb.LIST_SCOPE_SYSTEM)
    assert got == []
    _, resp = await names(details=True, search="cache")
    assert len(resp.servers[0].disks) == 1 and resp.servers[0].disks[0].path

    # Paging: 2 per page over 5 servers.
    seen, token, pages = [], "", 0
    while True:
        resp = await env.servers.ListServers(spb.ListServersRequest(
            scope=spb.LIST_SCOPE_SYSTEM, page_size=2, page_token=token))
        assert resp.total_size == 5
        seen += [s.name for s in resp.servers]
        pages += 1
        token = resp.next_page_token
        if not token:
            break
    assert seen == ["cache", "db-1", "web-1", "web-2", "web-3"] and pages == 3
    # A token is bound to its filters.
    resp = await env.servers.ListServers(spb.ListServersRequest(scope=spb.LIST_SCOPE_SYSTEM,
                                                                page_size=2))
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await env.servers.ListServers(spb.ListServersRequest(page_size=2,
                                                             page_token=resp.next_page_token))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(exc.value).metadata["field"] == "page_token"

    # Host usage reflects placement.
    from ferry_proto.region.v1 import host_service_pb2 as hpb
    h2 = (await env.hosts.GetHost(hpb.GetHostRequest(id="h2"))).host
    assert (h2.server_count, h2.cpu_used, h2.mem_used_mb) == (3, 3, 192)


async def test_second_operation_is_aborted_while_a_task_runs(env):
    agent = env.agents["h1"].servicer
    gate = agent.gate("PrepareGuest")
    resp = await env.servers.CreateServer(env.create_request("busy"))
    await poll(lambda: agent.entered["PrepareGuest"].is_set(), what="PrepareGuest called")
    before = env.counts()
    for call, req in [(env.servers.StartServer, spb.StartServerRequest(id="busy")),
                      (env.servers.StopServer, spb.StopServerRequest(id="busy")),
                      (env.servers.DeleteServer, spb.DeleteServerRequest(id="busy"))]:
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await call(req)
        assert exc.value.code() == grpc.StatusCode.ABORTED
        info = error_info(exc.value)
        assert info.metadata["task_id"] == resp.task_id
        assert resp.task_id in exc.value.details()
    assert env.counts() == before
    s = await env.server("busy")
    assert s.status == r.SERVER_STATUS_CREATING and s.task_id == resp.task_id
    gate.set()
    assert (await env.wait_task(resp.task_id)).state == r.TASK_STATE_SUCCEEDED


async def test_serial_log_tail_and_follow(env):
    agent = env.agents["h1"].servicer
    resp = await env.servers.CreateServer(env.create_request("con", auto_start=True))
    await env.wait_task(resp.task_id)
    tail = await env.servers.GetServerSerialLog(spb.GetServerSerialLogRequest(id="con",
                                                                              tail_lines=2))
    assert list(tail.lines) == ["line 4", "line 5"] and tail.next_offset > 0

    call = env.servers.WatchServerSerialLog(spb.WatchServerSerialLogRequest(id="con",
                                                                            tail_lines=3))
    first = await call.read()
    assert list(first.lines) == ["line 3", "line 4", "line 5"] and first.host_id == "h1"
    await poll(lambda: agent.watch_started.is_set(), what="agent watch")
    await agent.serial_new.put(["line 6", "line 7"])
    second = await call.read()
    assert list(second.lines) == ["line 6", "line 7"]
    # The client goes away: the region must end its call to the agent.
    call.cancel()
    await poll(lambda: agent.watch_ended.is_set(), timeout=10, what="agent stream cleaned up")


async def test_serial_log_of_unplaced_server_names_its_state(env):
    env.fake_scheduler.reject = []
    with pytest.raises(grpc.aio.AioRpcError):
        await env.servers.CreateServer(env.create_request("nohost"))
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await env.servers.GetServerSerialLog(spb.GetServerSerialLogRequest(id="nohost"))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(exc.value).metadata["state"] == "sched_fail"


async def test_watch_task_streams_stages_until_the_end(env):
    agent = env.agents["h1"].servicer
    gate = agent.gate("PrepareGuest")
    resp = await env.servers.CreateServer(env.create_request("watched", auto_start=True))
    call = env.tasks.WatchTask(tpb.WatchTaskRequest(id=resp.task_id))
    stages = []

    async def collect():
        async for msg in call:
            stages.append(msg.task.stage)
    collector = asyncio.create_task(collect())
    await poll(lambda: stages, what="first task message")
    gate.set()
    await asyncio.wait_for(collector, 15)
    assert stages[0] == "prepare_disks" and stages[-1] == "done"
    assert "start" in stages


async def test_concurrent_requests_on_one_name_or_server(env):
    results = await asyncio.gather(*[env.servers.CreateServer(env.create_request("dup"))
                                     for _ in range(5)], return_exceptions=True)
    ok = [x for x in results if not isinstance(x, BaseException)]
    errs = [x for x in results if isinstance(x, BaseException)]
    assert len(ok) == 1, results
    assert all(e.code() == grpc.StatusCode.ALREADY_EXISTS for e in errs), errs
    await env.wait_task(ok[0].task_id)
    assert env.counts()["servers"] == 1

    results = await asyncio.gather(*[env.servers.StartServer(spb.StartServerRequest(id="dup"))
                                     for _ in range(5)], return_exceptions=True)
    ok = [x for x in results if not isinstance(x, BaseException)]
    errs = [x for x in results if isinstance(x, BaseException)]
    assert len(ok) == 1, results
    assert {e.code() for e in errs} <= {grpc.StatusCode.ABORTED,
                                        grpc.StatusCode.FAILED_PRECONDITION}, errs
    assert (await env.wait_task(ok[0].task_id)).state == r.TASK_STATE_SUCCEEDED
