"""MigrationAgentService handlers for live migration (issue 4)."""

from __future__ import annotations


class LiveMigrationHandlers:
    """PrepareIncoming, MigrateGuest, SetMigrationParams, CancelMigration,
    FinishIncoming, AbortIncoming, CleanupSource."""
