"""TaskService servicer."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc

from ferry_common.validation import check_enum
from ferry_proto.region.v1 import resources_pb2
from ferry_proto.region.v1 import task_service_pb2 as pb
from ferry_proto.region.v1 import task_service_pb2_grpc

from ..domain.tasks import TaskQueries
from ..states import TaskState, from_proto
from . import convert


class TaskServicer(task_service_pb2_grpc.TaskServiceServicer):
    def __init__(self, tasks: TaskQueries) -> None:
        self.tasks = tasks

    async def ListTasks(self, request: pb.ListTasksRequest,
                        context: grpc.aio.ServicerContext) -> pb.ListTasksResponse:
        check_enum("state", request.state, resources_pb2.TaskState, allow_unspecified=True)
        tasks = await self.tasks.list_tasks(request.server, from_proto(TaskState, request.state),
                                      request.limit)
        return pb.ListTasksResponse(tasks=[convert.task(t) for t in tasks])

    async def GetTask(self, request: pb.GetTaskRequest,
                      context: grpc.aio.ServicerContext) -> pb.GetTaskResponse:
        return pb.GetTaskResponse(task=convert.task(await self.tasks.get(request.id)))

    async def WatchTask(self, request: pb.WatchTaskRequest,
                        context: grpc.aio.ServicerContext) -> AsyncIterator[pb.WatchTaskResponse]:
        stream = self.tasks.watch(request.id)
        async with contextlib.aclosing(stream):
            async for task in stream:
                yield pb.WatchTaskResponse(task=convert.task(task))
