"""`FerryClient.tasks`: list, get and watch the persisted tasks behind every operation."""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from ferry_proto.region.v1 import resources_pb2, task_service_pb2 as pb

from .enums import enum_from_str

if TYPE_CHECKING:
    from .sdk import FerryClient

_UNSET: Any = ...

TERMINAL_STATES = frozenset({resources_pb2.TASK_STATE_SUCCEEDED, resources_pb2.TASK_STATE_FAILED})


class TasksAPI:
    def __init__(self, client: FerryClient) -> None:
        self._c = client

    def list(self, *, server: str = "", state: str | int = "", limit: int = 0,
             timeout: Any = _UNSET) -> list[resources_pb2.Task]:
        """Tasks newest first; `state` is running|succeeded|failed|rolling_back."""
        req = pb.ListTasksRequest(server=server, state=enum_from_str(resources_pb2.TaskState, state),
                                  limit=limit)
        return list(self._c.call(self._c.task_stub.ListTasks, req, timeout).tasks)

    def get(self, id: str, *, timeout: Any = _UNSET) -> resources_pb2.Task:
        return self._c.call(self._c.task_stub.GetTask, pb.GetTaskRequest(id=id), timeout).task

    def watch(self, id: str, *, timeout: float | None = None) -> Generator[resources_pb2.Task, None, None]:
        """The task on every stage change until it ends."""
        for resp in self._c.stream(self._c.task_stub.WatchTask, pb.WatchTaskRequest(id=id), timeout):
            yield resp.task
