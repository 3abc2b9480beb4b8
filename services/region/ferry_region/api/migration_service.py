"""MigrationService: one servicer composed of the cold, live and forecast RPCs."""

from __future__ import annotations

from dataclasses import dataclass

from ferry_proto.region.v1 import migration_service_pb2_grpc

from ..domain.servers import ServerManager
from ..tasks.deps import TaskDeps
from ..tasks.engine import TaskEngine
from .migration_cold import ColdMigrationApi
from .migration_forecast import ForecastApi
from .migration_live import LiveMigrationApi


@dataclass
class MigrationParts:
    """What the migration RPCs may use."""

    servers: ServerManager
    engine: TaskEngine
    deps: TaskDeps


class MigrationServicer(ColdMigrationApi, LiveMigrationApi, ForecastApi,
                        migration_service_pb2_grpc.MigrationServiceServicer):
    """Thin: each RPC lives in api/migration_*.py and calls ferry_region.migration.*."""

    def __init__(self, parts: MigrationParts) -> None:
        self.parts = parts
