"""The persisted task engine and the task kinds."""

from .base import StageEnum, StepResult, TaskContext, TaskDefinition
from .engine import TaskEngine
from .cold_migrate import ServerMigrateTask
from .live_migrate import ServerLiveMigrateTask
from .server_create import ServerCreateTask
from .server_delete import ServerDeleteTask
from .server_power import ServerStartTask, ServerStopTask

SERVER_TASKS: tuple[type[TaskDefinition], ...] = (
    ServerCreateTask, ServerStartTask, ServerStopTask, ServerDeleteTask, ServerMigrateTask,
    ServerLiveMigrateTask)

__all__ = ["SERVER_TASKS", "StageEnum", "StepResult", "TaskContext", "TaskDefinition",
           "TaskEngine", "ServerCreateTask", "ServerDeleteTask", "ServerStartTask",
           "ServerStopTask"]
