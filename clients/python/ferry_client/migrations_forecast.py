"""SDK calls of the region's MigrationService: forecast (issue 3)."""

from __future__ import annotations


class ForecastMixin:
    """Mixed into MigrationsAPI; `self._c` is the FerryClient, `self._stub` the MigrationService stub."""
