"""SDK calls of the region's MigrationService: live_migrate, cancel_live_migrate, set_live_migrate_params, watch_progress (issue 4)."""

from __future__ import annotations


class LiveMigrationsMixin:
    """Mixed into MigrationsAPI; `self._c` is the FerryClient, `self._stub` the MigrationService stub."""
