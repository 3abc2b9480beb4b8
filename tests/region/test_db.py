"""Data layer on SQLite and on a real PostgreSQL: migrations, conditional transitions."""

from __future__ import annotations

import threading
import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select

from ferry_common.errors import Aborted, FailedPrecondition, NotFound
from ferry_region.db import Database
from ferry_region.db.migrate import current_revision
from ferry_region.db.models import Base, Image, Server, Task, utcnow
from ferry_region.db.transitions import acquire_server, release_server, transition_server
from ferry_region.states import (
    SERVER_TRANSITIONS,
    DiskFormat,
    ServerStatus,
    TaskKind,
    TaskState,
    allowed_from,
)
from ferry_region.tasks import ServerCreateTask
from ferry_region.tasks.server_create import CreateStage
from ferry_region.tasks.store import LostTask, insert_task, move, snapshot


@pytest.fixture
def db(db_url):
    database = Database(db_url)
    database.migrate()
    yield database
    database.engine.dispose()


def add_server(db: Database, status: ServerStatus = ServerStatus.READY, **kw) -> str:
    sid = str(uuid.uuid4())

    def tx(s):
        s.add(Server(id=sid, name=kw.get("name", f"s-{sid[:8]}"), status=status,
                     vcpu_count=1, memory_mb=64, project="default", status_reason=""))
    db.write_sync(tx)
    return sid


def status_of(db: Database, sid: str) -> ServerStatus:
    return db.read_sync(lambda s: s.get(Server, sid).status)


def test_migration_applies_and_matches_models(db):
    assert current_revision(db.engine) == "0003"
    tables = set(inspect(db.engine).get_table_names())
    assert {"hosts", "storages", "host_storages", "networks", "host_networks", "servers",
            "disks", "server_networks", "images", "tasks"} <= tables
    db.migrate()  # idempotent
    with db.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(ctx, Base.metadata) == []


def test_enums_and_json_round_trip(db):
    sid = add_server(db, ServerStatus.SCHED_FAIL)
    tid = db.write_sync(lambda s: insert_task(s, TaskKind.SERVER_CREATE, sid,
                                              CreateStage.SCHEDULE, {"auto_start": True}).id)
    t = db.read_sync(lambda s: s.get(Task, tid))
    assert t.kind is TaskKind.SERVER_CREATE and t.state is TaskState.RUNNING
    assert t.params == {"auto_start": True} and t.history == ["schedule"]
    assert t.created_at.tzinfo is not None
    assert status_of(db, sid) is ServerStatus.SCHED_FAIL


def test_transition_allowed_and_forbidden(db):
    sid = add_server(db, ServerStatus.READY)
    db.write_sync(transition_server, sid, ServerStatus.STARTING)
    assert status_of(db, sid) is ServerStatus.STARTING
    with pytest.raises(FailedPrecondition) as exc:
        db.write_sync(transition_server, sid, ServerStatus.DELETING)  # starting -> deleting: no
    assert exc.value.metadata["state"] == "starting"
    assert "starting" in exc.value.message
    assert status_of(db, sid) is ServerStatus.STARTING
    with pytest.raises(NotFound):
        db.write_sync(transition_server, "nope", ServerStatus.READY)


def test_every_table_entry_is_enforced(db):
    """For each (from, to): the update succeeds iff the table lists it."""
    sample = [ServerStatus.READY, ServerStatus.RUNNING, ServerStatus.CREATING,
              ServerStatus.DELETE_FAIL]
    for old in sample:
        for new in ServerStatus:
            if new == old:
                continue
            sid = add_server(db, old)
            ok = new in SERVER_TRANSITIONS[old]
            try:
                db.write_sync(transition_server, sid, new)
                assert ok, f"{old.value} -> {new.value} should be refused"
                assert status_of(db, sid) is new
            except FailedPrecondition:
                assert not ok, f"{old.value} -> {new.value} should be allowed"
                assert status_of(db, sid) is old


def test_acquire_then_second_operation_is_aborted(db):
    sid = add_server(db, ServerStatus.READY)
    db.write_sync(acquire_server, sid, "task-1", ServerStatus.STARTING)
    with pytest.raises(Aborted) as exc:
        db.write_sync(acquire_server, sid, "task-2", ServerStatus.DELETING)
    assert exc.value.metadata["task_id"] == "task-1"
    assert "task-1" in exc.value.message
    # Only the holder may move it, and only along the table.
    with pytest.raises(Aborted):
        db.write_sync(transition_server, sid, ServerStatus.RUNNING, task_id="task-2")
    db.write_sync(transition_server, sid, ServerStatus.RUNNING, task_id="task-1")
    assert db.write_sync(release_server, sid, "task-1")
    assert not db.write_sync(release_server, sid, "task-1")
    # Free again but running: starting is not reachable from running.
    with pytest.raises(FailedPrecondition) as exc2:
        db.write_sync(acquire_server, sid, "task-3", ServerStatus.STARTING)
    assert exc2.value.metadata["state"] == "running"


def _race(db: Database, fns) -> list[BaseException | None]:
    barrier = threading.Barrier(len(fns))
    results: list[BaseException | None] = [None] * len(fns)

    def run(i, fn):
        try:
            def tx(session):
                barrier.wait(timeout=10)
                fn(session)
            db.write_sync(tx)
        except BaseException as exc:  # noqa: BLE001
            results[i] = exc
    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(fns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def test_concurrent_acquire_exactly_one_wins(db):
    for _ in range(10):
        sid = add_server(db, ServerStatus.READY)
        results = _race(db, [
            lambda s, sid=sid: acquire_server(s, sid, "t-a", ServerStatus.STARTING),
            lambda s, sid=sid: acquire_server(s, sid, "t-b", ServerStatus.DELETING),
        ])
        winners = [r for r in results if r is None]
        losers = [r for r in results if r is not None]
        assert len(winners) == 1, results
        assert isinstance(losers[0], Aborted), losers
        holder = db.read_sync(lambda s, sid=sid: s.get(Server, sid).task_id)
        assert holder in ("t-a", "t-b")


def test_concurrent_transitions_exactly_one_wins(db):
    """ready -> starting and ready -> deleting are both allowed, but not one after the other."""
    for _ in range(10):
        sid = add_server(db, ServerStatus.READY)
        results = _race(db, [
            lambda s, sid=sid: transition_server(s, sid, ServerStatus.STARTING),
            lambda s, sid=sid: transition_server(s, sid, ServerStatus.DELETING),
        ])
        assert sum(r is None for r in results) == 1, results
        assert all(isinstance(r, FailedPrecondition) for r in results if r is not None)
        assert status_of(db, sid) in (ServerStatus.STARTING, ServerStatus.DELETING)


def test_task_stage_change_is_conditional(db):
    sid = add_server(db, ServerStatus.INIT)
    tid = db.write_sync(lambda s: insert_task(s, TaskKind.SERVER_CREATE, sid,
                                              ServerCreateTask.FIRST, {}).id)
    snap = db.read_sync(snapshot, tid)
    db.write_sync(move, snap, CreateStage.PREPARE_DISKS, TaskState.RUNNING)
    # A second runner holding the stale snapshot loses.
    with pytest.raises(LostTask):
        db.write_sync(move, snap, CreateStage.ROLLBACK, TaskState.ROLLING_BACK)
    # Task states follow their own table: succeeded is final.
    snap2 = db.read_sync(snapshot, tid)
    db.write_sync(move, snap2, CreateStage.DONE, TaskState.SUCCEEDED)
    snap3 = db.read_sync(snapshot, tid)
    with pytest.raises(ValueError):
        db.write_sync(move, snap3, CreateStage.ROLLBACK, TaskState.ROLLING_BACK)
    t = db.read_sync(lambda s: s.get(Task, tid))
    assert t.state is TaskState.SUCCEEDED and t.history == ["schedule", "prepare_disks", "done"]
    assert t.finished_at is not None


def test_concurrent_stage_advance_exactly_one_wins(db):
    sid = add_server(db, ServerStatus.INIT)
    tid = db.write_sync(lambda s: insert_task(s, TaskKind.SERVER_CREATE, sid,
                                              ServerCreateTask.FIRST, {}).id)
    snap = db.read_sync(snapshot, tid)
    results = _race(db, [
        lambda s: move(s, snap, CreateStage.PREPARE_DISKS, TaskState.RUNNING),
        lambda s: move(s, snap, CreateStage.ROLLBACK, TaskState.ROLLING_BACK),
    ])
    assert sum(r is None for r in results) == 1, results
    assert all(isinstance(r, LostTask) for r in results if r is not None)


def test_image_in_use_cannot_be_deleted_by_foreign_key(db):
    iid = str(uuid.uuid4())
    db.write_sync(lambda s: s.add(Image(id=iid, name="img", format=DiskFormat.RAW,
                                        created_at=utcnow())))
    sid = add_server(db)
    db.write_sync(lambda s: setattr(s.get(Server, sid), "image_id", iid))
    from sqlalchemy.exc import IntegrityError
    with pytest.raises(IntegrityError):
        db.write_sync(lambda s: s.delete(s.get(Image, iid)))
    assert db.read_sync(lambda s: s.scalar(select(Image.id))) == iid


def test_allowed_from_is_derived_from_the_table():
    assert ServerStatus.READY in allowed_from(SERVER_TRANSITIONS, ServerStatus.STARTING)
    assert ServerStatus.RUNNING not in allowed_from(SERVER_TRANSITIONS, ServerStatus.STARTING)
    assert allowed_from(SERVER_TRANSITIONS, ServerStatus.INIT) == frozenset()
