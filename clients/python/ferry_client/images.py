"""`FerryClient.images`: upload (streamed in 1 MiB chunks), list, get, delete."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, BinaryIO

from ferry_proto.region.v1 import image_service_pb2 as pb, resources_pb2

from .enums import enum_from_str
from .imagefmt import sniff_format

if TYPE_CHECKING:
    from .sdk import FerryClient

_UNSET: Any = ...

CHUNK_SIZE = 1024 * 1024  # the proto's limit per chunk


def upload_requests(name: str, path: str | os.PathLike[str], *, format: str | int | None = None,
                    min_memory_mb: int = 0,
                    chunk_size: int = CHUNK_SIZE) -> Iterator[pb.CreateImageRequest]:
    """The CreateImage stream: metadata first, then the file in chunks of at most `chunk_size`.

    `format` is qcow2|raw (or the enum value); None sniffs the file's magic.
    Arguments and the file are checked here, before the stream starts, so that
    mistakes raise in the caller and not inside gRPC's sending thread.
    """
    if not 0 < chunk_size <= CHUNK_SIZE:
        raise ValueError(f"chunk_size must be 1..{CHUNK_SIZE}")
    fmt = enum_from_str(resources_pb2.DiskFormat, format if format is not None else sniff_format(path))
    f = open(path, "rb")  # noqa: SIM115 - closed by the generator
    metadata = pb.ImageMetadata(name=name, format=fmt, min_memory_mb=min_memory_mb)
    return _stream(f, metadata, chunk_size)


def _stream(f: BinaryIO, metadata: pb.ImageMetadata, chunk_size: int) -> Iterator[pb.CreateImageRequest]:
    with f:
        yield pb.CreateImageRequest(metadata=metadata)
        while chunk := f.read(chunk_size):
            yield pb.CreateImageRequest(chunk=chunk)


class ImagesAPI:
    def __init__(self, client: FerryClient) -> None:
        self._c = client

    def create(self, name: str, path: str | os.PathLike[str], *, format: str | int | None = None,
               min_memory_mb: int = 0, timeout: float | None = None) -> resources_pb2.Image:
        """Upload the file at `path` as image `name`; no deadline unless `timeout` is given."""
        reqs = upload_requests(name, path, format=format, min_memory_mb=min_memory_mb)
        return self._c.call(self._c.image_stub.CreateImage, reqs, timeout).image

    def list(self, *, search: str = "", timeout: Any = _UNSET) -> list[resources_pb2.Image]:
        req = pb.ListImagesRequest(search=search)
        return list(self._c.call(self._c.image_stub.ListImages, req, timeout).images)

    def get(self, id: str, *, timeout: Any = _UNSET) -> resources_pb2.Image:
        return self._c.call(self._c.image_stub.GetImage, pb.GetImageRequest(id=id), timeout).image

    def delete(self, id: str, *, timeout: Any = _UNSET) -> resources_pb2.Image:
        return self._c.call(self._c.image_stub.DeleteImage, pb.DeleteImageRequest(id=id), timeout).image
