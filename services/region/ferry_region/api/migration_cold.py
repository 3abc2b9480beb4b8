"""MigrationService RPCs for cold migration, rescue and batches (issue 5)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ferry_proto.region.v1 import migration_service_pb2 as pb

from ..migration.cold_requests import ColdMigrations, MigrateOptions
from . import convert

if TYPE_CHECKING:
    from .migration_service import MigrationParts


class ColdMigrationApi:
    """MigrateServer, MigrateServers."""

    parts: MigrationParts

    @property
    def _cold(self) -> ColdMigrations:
        cm = self.__dict__.get("_cold_migrations")
        if cm is None:
            cm = ColdMigrations(self.parts.servers.db, self.parts.engine,
                                schedule_wait=self.parts.servers.schedule_wait)
            self.__dict__["_cold_migrations"] = cm
        return cm

    async def MigrateServer(self, request: pb.MigrateServerRequest, context) -> pb.MigrateServerResponse:
        opts = MigrateOptions(auto_start=request.auto_start, rescue=request.rescue_mode,
                              prefer_host=request.prefer_host,
                              max_bandwidth_mb=request.max_bandwidth_mb)
        server, task_id = await self._cold.migrate(request.id, opts)
        return pb.MigrateServerResponse(server=convert.server_record(server), task_id=task_id)

    async def MigrateServers(self, request: pb.MigrateServersRequest,
                             context) -> pb.MigrateServersResponse:
        opts = MigrateOptions(auto_start=request.auto_start, prefer_host=request.prefer_host,
                              max_in_flight=request.max_in_flight_per_host)
        results = await self._cold.migrate_many(list(request.ids), request.source_host, opts)
        return pb.MigrateServersResponse(results=[
            pb.MigrateServerResult(server_id=r.server_id, server_name=r.server_name,
                                   task_id=r.task_id, error=r.error, error_reason=r.error_reason)
            for r in results])
