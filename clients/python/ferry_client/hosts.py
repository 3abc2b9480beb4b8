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

    def watch(self, *, timeout: float | None = None) -> Generator[pb.WatchHostsResponse, None, None]:
        """A snapshot of every host, then batches of changes."""
        return self._c.stream(self._c.host_stub.WatchHosts, pb.WatchHostsRequest(), timeout)
