"""SDK calls of the region's MigrationService: live_migrate, cancel_live_migrate, set_live_migrate_params, watch_progress (issue 4)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from ferry_proto.region.v1 import migration_service_pb2 as pb

_UNSET: Any = ...


class LiveMigrationsMixin:
    """Mixed into MigrationsAPI; `self._c` is the FerryClient, `self._stub` the MigrationService stub."""

    _c: Any
    _stub: Any

    def live_migrate(self, id: str, *, prefer_host: str = "", skip_cpu_check: bool = False,
                     skip_kernel_check: bool = False, enable_tls: bool = False,
                     quickly_finish: bool = False, max_bandwidth_mb: int = 0,
                     keep_dest_guest_on_failed: bool = False, downtime_limit_ms: int = 0,
                     timeout: Any = _UNSET) -> pb.LiveMigrateServerResponse:
        """Live-migrate a running server; returns the server and the task id to wait on.
        `max_bandwidth_mb=0` is unlimited; `downtime_limit_ms=0` means 300 ms."""
        req = pb.LiveMigrateServerRequest(
            id=id, prefer_host=prefer_host, skip_cpu_check=skip_cpu_check,
            skip_kernel_check=skip_kernel_check, enable_tls=enable_tls,
            quickly_finish=quickly_finish, max_bandwidth_mb=max_bandwidth_mb,
            keep_dest_guest_on_failed=keep_dest_guest_on_failed,
            downtime_limit_ms=downtime_limit_ms)
        return self._c.call(self._stub.LiveMigrateServer, req, timeout)

    def cancel_live_migrate(self, id: str, *, timeout: Any = _UNSET) -> pb.CancelLiveMigrateResponse:
        """Cancel a running live migration; the server keeps running on its source host."""
        return self._c.call(self._stub.CancelLiveMigrate, pb.CancelLiveMigrateRequest(id=id), timeout)

    def set_live_migrate_params(self, id: str, *, max_bandwidth_mb: int | None = None,
                                downtime_limit_ms: int | None = None,
                                timeout: Any = _UNSET) -> pb.SetLiveMigrateParamsResponse:
        """Change the bandwidth cap (MB/s, 0 = unlimited) or downtime limit (ms) while it runs."""
        req = pb.SetLiveMigrateParamsRequest(id=id)
        if max_bandwidth_mb is not None:
            req.max_bandwidth_mb = max_bandwidth_mb
        if downtime_limit_ms is not None:
            req.downtime_limit_ms = downtime_limit_ms
        return self._c.call(self._stub.SetLiveMigrateParams, req, timeout)

    def watch_progress(self, id: str, *, timeout: float | None = None
                       ) -> Generator[pb.WatchServerProgressResponse, None, None]:
        """The server on every progress change; the last message has `done` (and, for a
        finished live migration, `downtime_ms` and `total_ms`)."""
        yield from self._c.stream(self._stub.WatchServerProgress,
                                  pb.WatchServerProgressRequest(id=id), timeout)
