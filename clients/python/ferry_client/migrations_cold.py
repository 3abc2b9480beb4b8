"""SDK calls of the region's MigrationService: migrate, migrate_many (issue 5)."""

from __future__ import annotations


class ColdMigrationsMixin:
    """Mixed into MigrationsAPI; `self._c` is the FerryClient, `self._stub` the MigrationService stub."""
