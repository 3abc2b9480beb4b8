"""A small in-test stand-in for the region's side of the host agent's calls.

Serves `HostRegistryService.RegisterHost` (records every request) and
`ImageService.DownloadImage` (streams registered byte strings, optionally
lying about the checksum) on 127.0.0.1 with an ephemeral port. Unit tests
only: the end-to-end tests run the real region.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field

import grpc

from ferry_proto.region.v1 import (
    image_service_pb2,
    image_service_pb2_grpc,
    registry_service_pb2,
    registry_service_pb2_grpc,
    resources_pb2,
)

CHUNK = 256 * 1024


@dataclass
class FakeImage:
    data: bytes
    format: int = resources_pb2.DISK_FORMAT_RAW
    checksum: str = ""  # what the region claims; "" = the real one

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class FakeRegion:
    images: dict[str, FakeImage] = field(default_factory=dict)
    registrations: list[registry_service_pb2.RegisterHostRequest] = field(default_factory=list)
    downloads: list[str] = field(default_factory=list)
    refresh_interval: int = 1
    not_placed_here: set[str] = field(default_factory=set)
    download_delay: float = 0.0
    server: grpc.aio.Server | None = None
    port: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> FakeRegion:
        self.server = grpc.aio.server()
        image_service_pb2_grpc.add_ImageServiceServicer_to_server(_Images(self), self.server)
        registry_service_pb2_grpc.add_HostRegistryServiceServicer_to_server(_Registry(self),
                                                                            self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        await self.server.start()
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)
            self.server = None


class _Images(image_service_pb2_grpc.ImageServiceServicer):
    def __init__(self, region: FakeRegion) -> None:
        self.region = region

    async def DownloadImage(self, request, context):
        image = self.region.images.get(request.id)
        if image is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"image {request.id!r} not found")
        self.region.downloads.append(request.id)
        meta = resources_pb2.Image(id=request.id, name=request.id, format=image.format,
                                   size_bytes=len(image.data),
                                   checksum_sha256=image.checksum or image.sha256)
        yield image_service_pb2.DownloadImageResponse(image=meta)
        for i in range(0, len(image.data), CHUNK):
            if self.region.download_delay:
                await asyncio.sleep(self.region.download_delay)
            yield image_service_pb2.DownloadImageResponse(chunk=image.data[i:i + CHUNK])


class _Registry(registry_service_pb2_grpc.HostRegistryServiceServicer):
    def __init__(self, region: FakeRegion) -> None:
        self.region = region

    async def RegisterHost(self, request, context):
        self.region.registrations.append(request)
        return registry_service_pb2.RegisterHostResponse(
            host=resources_pb2.Host(id=request.host_id, name=request.name,
                                    access_address=request.access_address),
            assignments=[registry_service_pb2.ServerAssignment(
                server_id=g.server_id, placed_here=g.server_id not in self.region.not_placed_here)
                for g in request.guests],
            refresh_interval_seconds=self.region.refresh_interval)
