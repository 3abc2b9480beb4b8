"""MigrationService RPCs for live migration and progress (issue 4)."""

from __future__ import annotations


class LiveMigrationApi:
    """LiveMigrateServer, CancelLiveMigrate, SetLiveMigrateParams, WatchServerProgress."""
