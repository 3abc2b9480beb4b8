"""Resource states of the region as Enums with declarative transition tables.

The tables are the single source of truth: `allowed_from(new)` is what the
conditional `UPDATE ... WHERE status IN (:allowed_from)` in `db.transitions`
uses, so a transition that the table does not list can never be written.
Values are the Cloudpods strings; proto enums are `<PREFIX>_<VALUE.upper()>`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import TypeVar

from ferry_proto.region.v1 import resources_pb2

E = TypeVar("E", bound=enum.Enum)


class ServerStatus(str, enum.Enum):
    INIT = "init"
    SCHEDULING = "scheduling"
    SCHED_FAIL = "sched_fail"
    CREATING = "creating"
    CREATE_FAIL = "create_fail"
    READY = "ready"
    STARTING = "starting"
    START_FAIL = "start_fail"
    RUNNING = "running"
    STOPPING = "stopping"
    STOP_FAIL = "stop_fail"
    DELETING = "deleting"
    DELETE_FAIL = "delete_fail"
    START_MIGRATE = "start_migrate"
    MIGRATING = "migrating"
    LIVE_MIGRATING = "live_migrating"
    MIGRATE_FAILED = "migrate_failed"
    SUSPENDED = "suspended"
    UNKNOWN = "unknown"


S = ServerStatus

#: Every allowed server status change, from -> {to}. Statuses a task moves a
#: server into (scheduling, creating, starting, stopping, deleting, ...) are
#: transitional; a task always leaves them, to a stable or a *_fail status.
SERVER_TRANSITIONS: Mapping[ServerStatus, frozenset[ServerStatus]] = {
    S.INIT: frozenset({S.SCHEDULING, S.SCHED_FAIL, S.DELETING}),
    S.SCHEDULING: frozenset({S.CREATING, S.SCHED_FAIL}),
    S.SCHED_FAIL: frozenset({S.DELETING}),
    S.CREATING: frozenset({S.READY, S.STARTING, S.CREATE_FAIL}),
    S.CREATE_FAIL: frozenset({S.DELETING}),
    S.READY: frozenset({S.STARTING, S.DELETING, S.START_MIGRATE, S.RUNNING, S.UNKNOWN}),
    S.STARTING: frozenset({S.RUNNING, S.START_FAIL}),
    S.START_FAIL: frozenset({S.STARTING, S.STOPPING, S.DELETING, S.START_MIGRATE}),
    # running -> start_migrate: only a rescue (the host is down), never a cold migration.
    S.RUNNING: frozenset({S.STOPPING, S.LIVE_MIGRATING, S.SUSPENDED, S.UNKNOWN, S.READY,
                          S.DELETING, S.START_MIGRATE}),
    S.STOPPING: frozenset({S.READY, S.STOP_FAIL}),
    S.STOP_FAIL: frozenset({S.STOPPING, S.STARTING, S.DELETING}),
    S.DELETING: frozenset({S.DELETE_FAIL}),  # success removes the row
    S.DELETE_FAIL: frozenset({S.DELETING}),
    S.START_MIGRATE: frozenset({S.MIGRATING, S.MIGRATE_FAILED, S.READY}),
    S.MIGRATING: frozenset({S.READY, S.MIGRATE_FAILED, S.STARTING}),
    S.LIVE_MIGRATING: frozenset({S.RUNNING, S.SUSPENDED, S.MIGRATE_FAILED}),
    S.MIGRATE_FAILED: frozenset({S.STARTING, S.STOPPING, S.DELETING, S.START_MIGRATE,
                                 S.LIVE_MIGRATING, S.RUNNING, S.READY}),
    S.SUSPENDED: frozenset({S.RUNNING, S.STOPPING, S.DELETING, S.UNKNOWN, S.LIVE_MIGRATING}),
    S.UNKNOWN: frozenset({S.RUNNING, S.READY, S.STOPPING, S.DELETING, S.START_MIGRATE}),
}

#: Statuses a server only passes through while a task runs.
TRANSITIONAL: frozenset[ServerStatus] = frozenset({
    S.INIT, S.SCHEDULING, S.CREATING, S.STARTING, S.STOPPING, S.DELETING,
    S.START_MIGRATE, S.MIGRATING, S.LIVE_MIGRATING,
})


def allowed_from(table: Mapping[E, frozenset[E]], new: E) -> frozenset[E]:
    """Every state the table allows `new` to be entered from."""
    return frozenset(s for s, targets in table.items() if new in targets)


def check_transition(table: Mapping[E, frozenset[E]], old: E, new: E) -> bool:
    return new in table.get(old, frozenset())


class HostStatus(str, enum.Enum):
    RUNNING = "running"
    READY = "ready"
    SHUTDOWN = "shutdown"


class HostHealth(str, enum.Enum):
    ONLINE = "online"
    OFFLINE = "offline"


class StorageKind(str, enum.Enum):
    LOCAL = "local"
    SHARED = "shared"


class DiskFormat(str, enum.Enum):
    QCOW2 = "qcow2"
    RAW = "raw"


class Accelerator(str, enum.Enum):
    UNSPECIFIED = "unspecified"
    KVM = "kvm"
    TCG = "tcg"


class ImageStatus(str, enum.Enum):
    SAVING = "saving"
    ACTIVE = "active"


class TaskKind(str, enum.Enum):
    SERVER_CREATE = "server_create"
    SERVER_START = "server_start"
    SERVER_STOP = "server_stop"
    SERVER_DELETE = "server_delete"
    SERVER_MIGRATE = "server_migrate"
    SERVER_LIVE_MIGRATE = "server_live_migrate"


class TaskState(str, enum.Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLING_BACK = "rolling_back"


TASK_STATE_TRANSITIONS: Mapping[TaskState, frozenset[TaskState]] = {
    TaskState.RUNNING: frozenset({TaskState.SUCCEEDED, TaskState.ROLLING_BACK}),
    TaskState.ROLLING_BACK: frozenset({TaskState.FAILED}),
    TaskState.SUCCEEDED: frozenset(),
    TaskState.FAILED: frozenset(),
}
TASK_ACTIVE = frozenset({TaskState.RUNNING, TaskState.ROLLING_BACK})


# --- proto enum mapping -------------------------------------------------------

_PREFIX: dict[type[enum.Enum], tuple[str, object]] = {
    ServerStatus: ("SERVER_STATUS_", resources_pb2.ServerStatus),
    HostStatus: ("HOST_STATUS_", resources_pb2.HostStatus),
    HostHealth: ("HOST_HEALTH_", resources_pb2.HostHealth),
    StorageKind: ("STORAGE_KIND_", resources_pb2.StorageKind),
    DiskFormat: ("DISK_FORMAT_", resources_pb2.DiskFormat),
    Accelerator: ("ACCELERATOR_", resources_pb2.Accelerator),
    ImageStatus: ("IMAGE_STATUS_", resources_pb2.ImageStatus),
    TaskKind: ("TASK_KIND_", resources_pb2.TaskKind),
    TaskState: ("TASK_STATE_", resources_pb2.TaskState),
}


def to_proto(value: enum.Enum | None) -> int:
    """The proto enum number of a domain Enum member (0 for None)."""
    if value is None:
        return 0
    prefix, pb_enum = _PREFIX[type(value)]
    return pb_enum.Value(prefix + str(value.value).upper())  # type: ignore[attr-defined]


def from_proto(enum_type: type[E], number: int) -> E | None:
    """The domain Enum member of a proto enum number; None for UNSPECIFIED."""
    prefix, pb_enum = _PREFIX[enum_type]
    name = pb_enum.Name(number)  # type: ignore[attr-defined]
    suffix = name[len(prefix):].lower()
    if suffix == "unspecified":
        return enum_type("unspecified") if "unspecified" in enum_type._value2member_map_ else None
    return enum_type(suffix)
