"""SDK calls of the region's MigrationService: migrate, migrate_many, cancel_migrate, set_migrate_params (issue 5)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ferry_proto.region.v1 import migration_service_pb2 as pb

_UNSET: Any = ...


class ColdMigrationsMixin:
    """Mixed into MigrationsAPI; `self._c` is the FerryClient, `self._stub` the MigrationService stub."""

    _c: Any
    _stub: Any

    def migrate(self, id: str, *, auto_start: bool = False, rescue_mode: bool = False,
                prefer_host: str = "", max_bandwidth_mb: int = 0,
                timeout: Any = _UNSET) -> pb.MigrateServerResponse:
        """Cold-migrate a stopped server (or rescue one whose host is down with
        `rescue_mode=True`); returns the server and the task id to wait on."""
        req = pb.MigrateServerRequest(id=id, auto_start=auto_start, rescue_mode=rescue_mode,
                                      prefer_host=prefer_host, max_bandwidth_mb=max_bandwidth_mb)
        return self._c.call(self._stub.MigrateServer, req, timeout)

    def migrate_many(self, ids: Iterable[str] = (), *, source_host: str = "",
                     prefer_host: str = "", auto_start: bool = False,
                     max_in_flight_per_host: int = 0,
                     timeout: Any = _UNSET) -> pb.MigrateServersResponse:
        """Cold-migrate several servers (or every ready server off `source_host`) with at most
        `max_in_flight_per_host` moving per source and per target host; one result each."""
        req = pb.MigrateServersRequest(ids=list(ids), source_host=source_host,
                                       prefer_host=prefer_host, auto_start=auto_start,
                                       max_in_flight_per_host=max_in_flight_per_host)
        return self._c.call(self._stub.MigrateServers, req, timeout)

    def cancel_migrate(self, id: str, *, timeout: Any = _UNSET) -> pb.CancelMigrateResponse:
        """Cancel a cold migration or rescue before its switch to the target; the server stays
        on its source (migrate_failed, CANCELLED) and a retry resumes the verified copy."""
        return self._c.call(self._stub.CancelMigrate, pb.CancelMigrateRequest(id=id), timeout)

    def set_migrate_params(self, id: str, *, max_bandwidth_mb: int,
                           timeout: Any = _UNSET) -> pb.SetMigrateParamsResponse:
        """Change the bandwidth cap (MB/s for the whole server, 0 = unlimited) while the
        server's disks copy."""
        return self._c.call(self._stub.SetMigrateParams,
                            pb.SetMigrateParamsRequest(id=id, max_bandwidth_mb=max_bandwidth_mb),
                            timeout)
