"""MigrationService RPCs for cold migration, rescue and batches (issue 5)."""

from __future__ import annotations


class ColdMigrationApi:
    """MigrateServer, MigrateServers."""
