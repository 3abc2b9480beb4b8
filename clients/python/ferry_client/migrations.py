"""SDK access to the region's MigrationService (`client.migrations`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ferry_proto.region.v1 import migration_service_pb2_grpc

from .migrations_cold import ColdMigrationsMixin
from .migrations_forecast import ForecastMixin
from .migrations_live import LiveMigrationsMixin

if TYPE_CHECKING:
    from .sdk import FerryClient


class MigrationsAPI(LiveMigrationsMixin, ColdMigrationsMixin, ForecastMixin):
    def __init__(self, client: FerryClient) -> None:
        self._c = client

    @property
    def _stub(self) -> Any:
        return self._c.migration_stub
