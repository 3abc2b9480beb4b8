"""The persisted task engine: resume after restart, rollback, deadlines, failure statuses."""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy import update

from ferry_common.errors import Internal
from ferry_proto.region.v1 import resources_pb2 as r
from ferry_proto.region.v1 import server_service_pb2 as spb
from ferry_region.db.models import Server
from ferry_region.db.transitions import acquire_server
from ferry_region.states import ServerStatus, TaskKind
from ferry_region.tasks import StageEnum, StepResult, TaskDefinition
from ferry_region.tasks.store import insert_task

from .conftest import poll, replace_timeouts


async def restart(env, **kw):
    await env.region.stop()
    region = await env.region_factory(db_url=env.db_url, scheduler=env.scheduler.address, **kw)
    await env.reconnect(region)
    return region


async def test_task_resumes_from_its_stage_after_a_restart(env_any):
    env = env_any
    agent = env.agents["h1"].servicer
    gate = agent.gate("PrepareGuest")
    resp = await env.servers.CreateServer(env.create_request("resumed", auto_start=True))
    await poll(lambda: agent.entered["PrepareGuest"].is_set(), what="PrepareGuest")
    t = await env.task(resp.task_id)
    assert t.state == r.TASK_STATE_RUNNING and t.stage == "prepare_disks"

    # Region goes away mid-stage; its runner is cancelled, nothing is rolled back.
    await env.region.stop()
    gate.set()
    await restart(env)
    t = await env.wait_task(resp.task_id)
    assert t.state == r.TASK_STATE_SUCCEEDED, t
    assert t.resume_count == 1
    assert list(t.history) == ["schedule", "prepare_disks", "start", "done"]
    s = await env.server("resumed")
    assert s.status == r.SERVER_STATUS_RUNNING and s.task_id == ""
    assert agent.counts["PrepareGuest"] == 2, "the interrupted stage ran again (idempotent)"
    assert len(env.fake_scheduler.selects) == 1, "the finished stage did not"


class CopyStage(StageEnum):
    COPY = "copy"
    DONE = "done"
    ROLLBACK = "rollback"
    FAILED = "failed"


class NonResumableTask(TaskDefinition):
    """A stand-in for a migration: its copy stage cannot be resumed."""

    kind = TaskKind.SERVER_MIGRATE
    Stage = CopyStage
    FIRST = CopyStage.COPY
    NOT_RESUMABLE = frozenset({CopyStage.COPY})
    TRANSITIONS = {CopyStage.COPY: frozenset({CopyStage.DONE, CopyStage.ROLLBACK}),
                   CopyStage.ROLLBACK: frozenset({CopyStage.FAILED})}
    entered = asyncio.Event()
    rolled_back: list[str] = []

    async def stage_copy(self, ctx):
        type(self).entered.set()
        await asyncio.Event().wait()  # never finishes by itself
        return StepResult(server_status=ServerStatus.MIGRATING)

    async def stage_rollback(self, ctx):
        type(self).rolled_back.append(ctx.task.id)
        return StepResult()

    def failed_status(self, ctx):
        return ServerStatus.MIGRATE_FAILED


async def test_a_stage_that_cannot_resume_rolls_back(env_any):
    env = env_any
    NonResumableTask.entered = asyncio.Event()
    resp = await env.servers.CreateServer(env.create_request("mig"))
    await env.wait_task(resp.task_id)
    sid = resp.server.id
    env.region.engine.register(NonResumableTask)
    tid = str(uuid.uuid4())

    def take(session):
        acquire_server(session, sid, tid, ServerStatus.START_MIGRATE)
        insert_task(session, TaskKind.SERVER_MIGRATE, sid, CopyStage.COPY, {}, task_id=tid)
    await env.region.db.write(take)
    env.region.engine.launch(tid)
    await asyncio.wait_for(NonResumableTask.entered.wait(), 10)

    region = await restart(env, resume_tasks=False)
    region.engine.register(NonResumableTask)
    await region.engine.start()
    t = await env.wait_task(tid)
    assert t.state == r.TASK_STATE_FAILED and t.error_reason == "TASK_INTERRUPTED"
    assert t.resume_count == 1 and list(t.history) == ["copy", "rollback", "failed"]
    assert tid in NonResumableTask.rolled_back
    s = await env.server(sid)
    assert s.status == r.SERVER_STATUS_MIGRATE_FAILED and s.task_id == ""
    assert "cannot be resumed" in s.status_reason


async def test_unreachable_host_fails_the_task_with_a_reason(bare_env):
    e = bare_env
    await e.upload_image("boot")
    await e.add_host("dead", address="127.0.0.1:1")  # nothing listens there
    resp = await e.servers.CreateServer(e.create_request("orphan"))
    t = await e.wait_task(resp.task_id)
    assert t.state == r.TASK_STATE_FAILED and t.error_reason == "PEER_UNAVAILABLE"
    assert list(t.history) == ["schedule", "prepare_disks", "rollback", "release", "failed"]
    s = await e.server("orphan")
    assert s.status == r.SERVER_STATUS_CREATE_FAIL and "127.0.0.1:1" in s.status_reason
    # The guest could not be cleaned up, so the server stays placed for a later delete.
    assert s.host_id == "dead" and s.task_id == ""
    # Delete needs the host too: it fails with delete_fail, never hangs.
    d = await e.servers.DeleteServer(spb.DeleteServerRequest(id="orphan"))
    t = await e.wait_task(d.task_id)
    assert t.state == r.TASK_STATE_FAILED
    assert (await e.server("orphan")).status == r.SERVER_STATUS_DELETE_FAIL


async def test_a_hanging_agent_hits_the_deadline(bare_env):
    e = bare_env
    await e.region.stop()
    region = await e.region_factory(db_url=e.db_url, scheduler=e.scheduler.address,
                                    timeouts=replace_timeouts(start_guest=1.0))
    await e.reconnect(region)
    await e.upload_image("boot")
    agent = await e.add_host("slow")
    resp = await e.servers.CreateServer(e.create_request("hang"))
    await e.wait_task(resp.task_id)
    gate = agent.gate("StartGuest")
    st = await e.servers.StartServer(spb.StartServerRequest(id="hang"))
    t = await e.wait_task(st.task_id, timeout=10)
    assert t.state == r.TASK_STATE_FAILED and t.error_reason == "PEER_UNAVAILABLE"
    s = await e.server("hang")
    assert s.status == r.SERVER_STATUS_START_FAIL and s.status_reason
    # From start_fail the server can be started again once the host answers.
    gate.set()
    st2 = await e.servers.StartServer(spb.StartServerRequest(id="hang"))
    assert (await e.wait_task(st2.task_id)).state == r.TASK_STATE_SUCCEEDED
    assert (await e.server("hang")).status == r.SERVER_STATUS_RUNNING


async def test_stage_deadline_rolls_back_creation(bare_env):
    e = bare_env
    await e.region.stop()
    region = await e.region_factory(db_url=e.db_url, scheduler=e.scheduler.address,
                                    timeouts=replace_timeouts(stage=1.0))
    await e.reconnect(region)
    await e.upload_image("boot")
    agent = await e.add_host("h1")
    agent.gate("PrepareGuest")
    resp = await e.servers.CreateServer(e.create_request("late"))
    t = await e.wait_task(resp.task_id, timeout=10)
    assert t.state == r.TASK_STATE_FAILED and t.error_reason == "STAGE_TIMEOUT"
    s = await e.server("late")
    assert s.status == r.SERVER_STATUS_CREATE_FAIL
    assert agent.counts["DeleteGuest"] == 1, "rollback deleted the half-made guest"
    assert s.host_id == "" and s.disks[0].storage_id == "", "placement given back"


async def test_agent_errors_end_in_fail_statuses_and_can_be_retried(env):
    agent = env.agents["h1"].servicer
    resp = await env.servers.CreateServer(env.create_request("flaky", auto_start=True))
    await env.wait_task(resp.task_id)
    agent.behaviour.fail["StopGuest"] = Internal("qemu refused to quit")
    sp = await env.servers.StopServer(spb.StopServerRequest(id="flaky"))
    t = await env.wait_task(sp.task_id)
    assert t.state == r.TASK_STATE_FAILED and "qemu refused to quit" in t.error
    s = await env.server("flaky")
    assert s.status == r.SERVER_STATUS_STOP_FAIL and "qemu refused" in s.status_reason
    del agent.behaviour.fail["StopGuest"]
    sp = await env.servers.StopServer(spb.StopServerRequest(id="flaky"))
    assert (await env.wait_task(sp.task_id)).state == r.TASK_STATE_SUCCEEDED
    s = await env.server("flaky")
    assert s.status == r.SERVER_STATUS_READY and s.status_reason == ""

    agent.behaviour.fail["StartGuest"] = Internal("no such machine type")
    st = await env.servers.StartServer(spb.StartServerRequest(id="flaky"))
    await env.wait_task(st.task_id)
    assert (await env.server("flaky")).status == r.SERVER_STATUS_START_FAIL
    assert ("StopGuest", resp.server.id) == agent.calls[-1], "failed start force-stopped"


async def test_orphaned_transitional_servers_are_repaired_at_start(env):
    resp = await env.servers.CreateServer(env.create_request("stuck"))
    await env.wait_task(resp.task_id)
    sid = resp.server.id

    def corrupt(session):  # as if a task row had been lost
        session.execute(update(Server).where(Server.id == sid)
                        .values(status=ServerStatus.STARTING, task_id="lost-task"))
    await env.region.db.write(corrupt)
    await restart(env)
    s = await env.server(sid)
    assert s.status == r.SERVER_STATUS_START_FAIL and s.task_id == ""
