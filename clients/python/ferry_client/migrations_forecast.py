"""SDK calls of the region's MigrationService: forecast (issue 3)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ferry_proto.region.v1 import migration_service_pb2 as pb

if TYPE_CHECKING:
    from .sdk import FerryClient

_UNSET: Any = ...


class ForecastMixin:
    """Mixed into MigrationsAPI; `self._c` is the FerryClient, `self._stub` the MigrationService stub."""

    _c: FerryClient
    _stub: Any

    def forecast(self, id: str, *, live: bool = False, rescue_mode: bool = False,
                 prefer_host: str = "", skip_cpu_check: bool = False,
                 skip_kernel_check: bool = False,
                 timeout: Any = _UNSET) -> pb.ForecastMigrationResponse:
        """Where server `id` (id or name) could be migrated, and why every other host cannot take it.

        `live` adds the CPU model/microcode and kernel checks (unless skipped);
        `rescue_mode` asks for a rescue (every disk on shared storage). Nothing
        is reserved: the answer is `can_place`, the candidates best first with
        their scores, and every rejected host with each filter's reason and sentence.
        """
        req = pb.ForecastMigrationRequest(id=id, live=live, rescue_mode=rescue_mode,
                                          prefer_host=prefer_host, skip_cpu_check=skip_cpu_check,
                                          skip_kernel_check=skip_kernel_check)
        return self._c.call(self._stub.ForecastMigration, req, timeout)
