"""`FerryClient.hosts`: list and get hypervisor hosts."""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from ferry_proto.region.v1 import host_service_pb2 as pb, resources_pb2

if TYPE_CHECKING:
    from .sdk import FerryClient

_UNSET: Any = ...


class HostsAPI:
    def __init__(self, client: FerryClient) -> None:
        self._c = client

    def list(self, *, hypervisor: str = "", search: str = "",
             timeout: Any = _UNSET) -> list[resources_pb2.Host]:
        req = pb.ListHostsRequest(hypervisor=hypervisor, search=search)
        return list(self._c.call(self._c.host_stub.ListHosts, req, timeout).hosts)

    def get(self, id: str, *, timeout: Any = _UNSET) -> resources_pb2.Host:
        return self._c.call(self._c.host_stub.GetHost, pb.GetHostRequest(id=id), timeout).host

    def set_auto_migrate(self, id: str, *, on_host_down: bool | None = None,
                         on_host_shutdown: bool | None = None,
                         timeout: Any = _UNSET) -> resources_pb2.Host:
        """Enable/disable automatic migration on host down / shutdown (None leaves a flag)."""
        req = pb.SetHostAutoMigrateRequest(id=id)
        if on_host_down is not None:
            req.auto_migrate_on_host_down = on_host_down
        if on_host_shutdown is not None:
            req.auto_migrate_on_host_shutdown = on_host_shutdown
        return self._c.call(self._c.host_stub.SetHostAutoMigrate, req, timeout).host

    def set_enabled(self, id: str, enabled: bool, *,
                    timeout: Any = _UNSET) -> resources_pb2.Host:
        """Enable or disable a host for scheduling (new servers and migrations)."""
        req = pb.SetHostEnabledRequest(id=id, enabled=enabled)
        return self._c.call(self._c.host_stub.SetHostEnabled, req, timeout).host

    def down_incidents(self, host: str = "", *, open_only: bool = False,
                       timeout: Any = _UNSET) -> list[pb.HostDownIncident]:
        """Host-down incidents, oldest first (a paused one says why auto-rescue held back)."""
        req = pb.ListHostDownIncidentsRequest(host=host, open_only=open_only)
        return list(self._c.call(self._c.host_stub.ListHostDownIncidents, req,
                                 timeout).incidents)

    def watch(self, *, timeout: float | None = None) -> Generator[pb.WatchHostsResponse, None, None]:
        """A snapshot of every host, then batches of changes."""
        return self._c.stream(self._c.host_stub.WatchHosts, pb.WatchHostsRequest(), timeout)
