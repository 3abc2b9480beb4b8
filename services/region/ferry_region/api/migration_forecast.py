"""MigrationService RPC for the placement forecast (issue 3)."""

from __future__ import annotations


class ForecastApi:
    """ForecastMigration."""
