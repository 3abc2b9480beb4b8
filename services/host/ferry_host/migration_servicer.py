"""MigrationAgentService: one servicer composed of the live and the cold handlers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ferry_proto.host.v1 import migration_pb2_grpc

from .migration.copy_api import DiskCopyHandlers
from .migration.live_api import LiveMigrationHandlers

if TYPE_CHECKING:
    from .app import Agent


class MigrationAgentServicer(LiveMigrationHandlers, DiskCopyHandlers,
                             migration_pb2_grpc.MigrationAgentServiceServicer):
    """Thin: each handler lives in ferry_host.migration.*; `agent` gives access to
    the guest registry, storages, driver, image cache and configuration."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
