"""ImageService servicer."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from ferry_common.errors import InvalidArgument
from ferry_proto.region.v1 import image_service_pb2 as pb
from ferry_proto.region.v1 import image_service_pb2_grpc

from ..domain.images import ImageManager, ImageUpload
from . import convert


class ImageServicer(image_service_pb2_grpc.ImageServiceServicer):
    def __init__(self, images: ImageManager) -> None:
        self.images = images

    async def CreateImage(self, request_iterator: AsyncIterator[pb.CreateImageRequest],
                          context: grpc.aio.ServicerContext) -> pb.CreateImageResponse:
        it = request_iterator.__aiter__()
        try:
            first = await it.__anext__()
        except StopAsyncIteration:
            raise InvalidArgument("metadata", "the upload is empty; the first message must "
                                              "carry the metadata") from None
        if first.WhichOneof("part") != "metadata":
            raise InvalidArgument("metadata", "the first message must carry the metadata")
        m = first.metadata

        async def chunks() -> AsyncIterator[bytes]:
            async for msg in it:
                if msg.WhichOneof("part") != "chunk":
                    raise InvalidArgument("metadata", "only the first message may carry "
                                                      "metadata")
                yield msg.chunk

        view = await self.images.create(ImageUpload(m.name, m.format, m.min_memory_mb), chunks())
        return pb.CreateImageResponse(image=convert.image(view))

    async def ListImages(self, request: pb.ListImagesRequest,
                         context: grpc.aio.ServicerContext) -> pb.ListImagesResponse:
        return pb.ListImagesResponse(images=[convert.image(v)
                                             for v in await self.images.list_images(request.search)])

    async def GetImage(self, request: pb.GetImageRequest,
                       context: grpc.aio.ServicerContext) -> pb.GetImageResponse:
        return pb.GetImageResponse(image=convert.image(await self.images.get(request.id)))

    async def DeleteImage(self, request: pb.DeleteImageRequest,
                          context: grpc.aio.ServicerContext) -> pb.DeleteImageResponse:
        return pb.DeleteImageResponse(image=convert.image(await self.images.delete(request.id)))

    async def DownloadImage(self, request: pb.DownloadImageRequest,
                            context: grpc.aio.ServicerContext
                            ) -> AsyncIterator[pb.DownloadImageResponse]:
        view, chunks = await self.images.download(request.id)
        first = True
        async for data in chunks:
            if first:
                yield pb.DownloadImageResponse(image=convert.image(view), chunk=data)
                first = False
            else:
                yield pb.DownloadImageResponse(chunk=data)
        if first:
            yield pb.DownloadImageResponse(image=convert.image(view))
