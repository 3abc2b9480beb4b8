"""MigrationService RPC for the placement forecast (issue 3)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc
from ferry_proto.region.v1 import migration_service_pb2 as pb

from ..migration.forecast import forecast_migration

if TYPE_CHECKING:
    from .migration_service import MigrationParts


class ForecastApi:
    """ForecastMigration: the scheduler's candidates and every rejected host with its reasons."""

    parts: MigrationParts

    async def ForecastMigration(self, request: pb.ForecastMigrationRequest,
                                context: grpc.aio.ServicerContext
                                ) -> pb.ForecastMigrationResponse:
        return await forecast_migration(self.parts.deps, request)
