"""`FerryClient.servers`: create, start, stop, delete, get, list (and page), serial log."""

from __future__ import annotations

import builtins
from collections.abc import Generator, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeAlias

from ferry_proto.region.v1 import resources_pb2, server_service_pb2 as pb

from .enums import enum_from_str

if TYPE_CHECKING:
    from .sdk import FerryClient

_UNSET: Any = ...

DiskSpec: TypeAlias = "pb.DiskRequest | tuple[int, str] | int"


def disk_request(spec: DiskSpec, default_storage: str = "") -> pb.DiskRequest:
    """A `DiskRequest` from a message, a `(size_mb, storage)` pair or a size in MiB."""
    if isinstance(spec, pb.DiskRequest):
        return spec
    if isinstance(spec, tuple):
        size, storage = spec
        return pb.DiskRequest(size_mb=int(size), storage=storage or default_storage)
    return pb.DiskRequest(size_mb=int(spec), storage=default_storage)


class ServersAPI:
    """Server operations. Mutations return the response with the `task_id` to wait on."""

    def __init__(self, client: FerryClient) -> None:
        self._c = client

    @property
    def _stub(self) -> Any:
        return self._c.server_stub

    def create(self, name: str, image: str, *, vcpu_count: int = 1, memory_mb: int = 256,
               disk_size_mb: int = 0, storage: str = "", data_disks: Iterable[DiskSpec] = (),
               networks: Iterable[str] = (), prefer_host: str = "", auto_start: bool = False,
               project: str = "", timeout: Any = _UNSET) -> pb.CreateServerResponse:
        """Create a server from `image` (id or name). `disk_size_mb=0` takes the image's size;
        `storage` ("local", "shared" or a storage id) applies to the system disk and to data
        disks given without their own."""
        req = pb.CreateServerRequest(
            name=name, image=image, vcpu_count=vcpu_count, memory_mb=memory_mb,
            system_disk=pb.DiskRequest(size_mb=disk_size_mb, storage=storage),
            data_disks=[disk_request(d, storage) for d in data_disks],
            networks=list(networks), prefer_host=prefer_host, auto_start=auto_start,
            project=project)
        return self._c.call(self._stub.CreateServer, req, timeout)

    def start(self, id: str, *, timeout: Any = _UNSET) -> pb.StartServerResponse:
        return self._c.call(self._stub.StartServer, pb.StartServerRequest(id=id), timeout)

    def stop(self, id: str, *, force: bool = False, timeout: Any = _UNSET) -> pb.StopServerResponse:
        return self._c.call(self._stub.StopServer, pb.StopServerRequest(id=id, force=force), timeout)

    def delete(self, id: str, *, timeout: Any = _UNSET) -> pb.DeleteServerResponse:
        return self._c.call(self._stub.DeleteServer, pb.DeleteServerRequest(id=id), timeout)

    def get(self, id: str, *, timeout: Any = _UNSET) -> resources_pb2.Server:
        return self._c.call(self._stub.GetServer, pb.GetServerRequest(id=id), timeout).server

    @staticmethod
    def list_request(*, search: str = "", details: bool = False, scope: str | int = "",
                     project: str = "", host: str = "", status: str | int = "",
                     page_size: int = 0, page_token: str = "") -> pb.ListServersRequest:
        """The `ListServersRequest` for these filters; `scope` is project|system,
        `status` a Cloudpods status string such as `running` (or the enum value)."""
        return pb.ListServersRequest(
            search=search, details=details, scope=enum_from_str(pb.ListScope, scope),
            project=project, host=host, status=enum_from_str(resources_pb2.ServerStatus, status),
            page_size=page_size, page_token=page_token)

    def list(self, *, timeout: Any = _UNSET, **filters: Any) -> pb.ListServersResponse:
        """One page of servers; see `list_request` for the filters."""
        return self._c.call(self._stub.ListServers, self.list_request(**filters), timeout)

    def iter(self, *, timeout: Any = _UNSET, **filters: Any) -> Iterator[resources_pb2.Server]:
        """Every matching server, following `next_page_token` from page to page."""
        token = filters.pop("page_token", "")
        while True:
            page = self.list(page_token=token, timeout=timeout, **filters)
            yield from page.servers
            token = page.next_page_token
            if not token:
                return

    def serial_log(self, id: str, tail_lines: int = 100, *, timeout: Any = _UNSET) -> builtins.list[str]:
        """The last `tail_lines` lines of the server's serial console."""
        req = pb.GetServerSerialLogRequest(id=id, tail_lines=tail_lines)
        return list(self._c.call(self._stub.GetServerSerialLog, req, timeout).lines)

    def follow_serial_log(self, id: str, tail_lines: int = 100, *,
                          timeout: float | None = None) -> Generator[str, None, None]:
        """The last `tail_lines` lines, then every new line as the guest writes it.
        Closing the iterator (or breaking out of the loop) cancels the stream."""
        req = pb.WatchServerSerialLogRequest(id=id, tail_lines=tail_lines)
        for chunk in self._c.stream(self._stub.WatchServerSerialLog, req, timeout):
            yield from chunk.lines
