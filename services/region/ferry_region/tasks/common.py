"""Helpers the server task kinds share: host lookup, guest spec, peer error tests."""

from __future__ import annotations

import grpc
from sqlalchemy.orm import Session

from ferry_common.errors import FailedPrecondition, FerryError, NotFound, Unavailable
from ferry_proto.host.v1 import agent_pb2

from ..db.models import Host, Image, Server
from .base import TaskContext


def is_not_found(exc: BaseException) -> bool:
    return isinstance(exc, NotFound) or (isinstance(exc, FerryError)
                                         and exc.code == grpc.StatusCode.NOT_FOUND)


def is_unreachable(exc: BaseException) -> bool:
    return isinstance(exc, Unavailable)


def _host_address(session: Session, host_id: str) -> str:
    host = session.get(Host, host_id)
    if host is None:
        raise NotFound("host", host_id)
    if not host.access_address:
        raise FailedPrecondition(f"host {host.name} has no access address", state="no_address")
    return host.access_address


async def host_address(ctx: TaskContext, host_id: str) -> str:
    return await ctx.deps.db.read(_host_address, host_id)


async def placed_server(ctx: TaskContext) -> tuple[Server, str]:
    """The task's server and its host's agent address; FailedPrecondition if not placed."""
    server = await ctx.server()
    if server is None:
        raise NotFound("server", ctx.server_id)
    if not server.host_id:
        raise FailedPrecondition(f"server {server.name} is not placed on a host",
                                 state=server.status.value)
    return server, await host_address(ctx, server.host_id)


def _image(session: Session, image_id: str | None) -> Image | None:
    return session.get(Image, image_id) if image_id else None


async def guest_spec(ctx: TaskContext, server: Server) -> agent_pb2.GuestSpec:
    image = await ctx.deps.db.read(_image, server.image_id)
    disks = []
    for d in server.disks:
        spec = agent_pb2.DiskSpec(disk_id=d.id, index=d.index, storage_id=d.storage_id or "",
                                  size_mb=d.size_mb)
        if d.image_id and image is not None and d.image_id == image.id:
            spec.image_id = image.id
            spec.image_checksum_sha256 = image.checksum_sha256
            spec.image_format = image.format.value
        disks.append(spec)
    nics = [agent_pb2.NicSpec(network=n.network, mac=n.mac, index=n.index) for n in server.nics]
    return agent_pb2.GuestSpec(guest_id=server.id, name=server.name, vcpu_count=server.vcpu_count,
                               memory_mb=server.memory_mb, disks=disks, nics=nics)
