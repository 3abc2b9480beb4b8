"""Images: upload (validated before anything is stored), list, get, delete, download.

Files live in `<data-dir>/images/<image id>`; an upload is written to a
temporary `.upload-*` file in the same folder, checked, hashed, then renamed
and only then recorded in the database. A failed or abandoned upload leaves
nothing behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ferry_common.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from ferry_common.validation import MAX_ID_LEN, check_enum, check_ident, check_name

from ferry_proto.region.v1 import resources_pb2

from ..db.engine import Database, is_fk_violation, is_unique_violation
from ..db.models import Image, Server, utcnow
from ..db.queries import find_image, image_server_counts, search_clause
from ..images.validate import inspect
from ..states import DiskFormat, ImageStatus, from_proto

log = logging.getLogger(__name__)

CHUNK = 1024 * 1024
MAX_IMAGE_BYTES = 256 * 1024 ** 3
MAX_MEMORY_MB = 1_048_576


@dataclass
class ImageView:
    image: Image
    server_count: int


@dataclass
class ImageUpload:
    name: str
    format: int
    min_memory_mb: int = 0


class ImageManager:
    def __init__(self, db: Database, images_dir: Path) -> None:
        self.db = db
        self.dir = images_dir

    def prepare(self) -> None:
        """Creates the folder and removes uploads a crash left behind."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.dir.glob(".upload-*"):
            leftover.unlink(missing_ok=True)

    def path_of(self, image: Image) -> Path:
        return self.dir / (image.file_name or image.id)

    # --- upload ---

    async def create(self, meta: ImageUpload, chunks: AsyncIterator[bytes]) -> ImageView:
        check_name("metadata.name", meta.name)
        check_enum("metadata.format", meta.format, resources_pb2.DiskFormat)
        if meta.min_memory_mb < 0 or meta.min_memory_mb > MAX_MEMORY_MB:
            raise InvalidArgument("metadata.min_memory_mb",
                                  f"must be between 0 and {MAX_MEMORY_MB}, got {meta.min_memory_mb}")
        fmt = from_proto(DiskFormat, meta.format)
        assert fmt is not None
        if await self.db.read(_name_taken, meta.name):
            raise AlreadyExists("image", meta.name)
        self.dir.mkdir(parents=True, exist_ok=True)
        image_id = str(uuid.uuid4())
        tmp = self.dir / f".upload-{image_id}"
        final = self.dir / image_id
        loop = asyncio.get_running_loop()
        try:
            digest = hashlib.sha256()
            size = 0
            with tmp.open("wb") as f:
                async for chunk in chunks:
                    if len(chunk) > CHUNK:
                        raise InvalidArgument("chunk", f"chunks must be at most {CHUNK} bytes, "
                                                       f"got {len(chunk)}")
                    size += len(chunk)
                    if size > MAX_IMAGE_BYTES:
                        raise InvalidArgument("chunk", f"image larger than {MAX_IMAGE_BYTES} bytes")
                    digest.update(chunk)
                    await loop.run_in_executor(None, f.write, chunk)
            facts = await inspect(tmp, fmt)
            os.replace(tmp, final)
            image = Image(id=image_id, name=meta.name, format=fmt, size_bytes=facts.size_bytes,
                          virtual_size_mb=facts.virtual_size_mb,
                          checksum_sha256=digest.hexdigest(), status=ImageStatus.ACTIVE,
                          min_memory_mb=meta.min_memory_mb, file_name=image_id,
                          created_at=utcnow())
            try:
                await self.db.write(_insert, image)
            except IntegrityError as exc:
                final.unlink(missing_ok=True)
                if is_unique_violation(exc):
                    raise AlreadyExists("image", meta.name) from exc
                raise
            except BaseException:
                final.unlink(missing_ok=True)
                raise
            log.info("image %s (%s, %s, %d bytes) stored", meta.name, image_id, fmt.value, size)
            return ImageView(image, 0)
        finally:
            tmp.unlink(missing_ok=True)

    # --- reads ---

    async def list_images(self, search: str = "") -> list[ImageView]:
        if len(search) > MAX_ID_LEN:
            raise InvalidArgument("search", f"must be at most {MAX_ID_LEN} characters")

        def tx(session: Session) -> list[ImageView]:
            stmt = select(Image).order_by(Image.name)
            if search:
                stmt = stmt.where(search_clause(Image.name, Image.id, search))
            images = list(session.scalars(stmt).all())
            counts = image_server_counts(session, [i.id for i in images])
            return [ImageView(i, counts.get(i.id, 0)) for i in images]
        return await self.db.read(tx)

    async def get(self, ident: str) -> ImageView:
        check_ident("id", ident)

        def tx(session: Session) -> ImageView:
            image = find_image(session, ident)
            return ImageView(image, image_server_counts(session, [image.id]).get(image.id, 0))
        return await self.db.read(tx)

    # --- delete ---

    async def delete(self, ident: str) -> ImageView:
        check_ident("id", ident)

        def tx(session: Session) -> ImageView:
            image = find_image(session, ident)
            used = session.scalar(select(func.count(Server.id))
                                  .where(Server.image_id == image.id)) or 0
            if used:
                raise FailedPrecondition(f"image {image.name} is used by {used} server(s)",
                                         state="in_use", metadata={"server_count": str(used)})
            session.delete(image)
            session.flush()
            return ImageView(image, 0)
        try:
            view = await self.db.write(tx)
        except IntegrityError as exc:
            if is_fk_violation(exc):
                raise FailedPrecondition(f"image {ident} is used by a server",
                                         state="in_use") from exc
            raise
        self.path_of(view.image).unlink(missing_ok=True)
        return view

    # --- download ---

    async def download(self, image_id: str) -> tuple[ImageView, AsyncIterator[bytes]]:
        view = await self.get(image_id)
        path = self.path_of(view.image)
        if not path.exists():
            raise FailedPrecondition(f"image {view.image.name} has no file on the region",
                                     state="missing_file")

        async def chunks() -> AsyncIterator[bytes]:
            loop = asyncio.get_running_loop()
            with path.open("rb") as f:
                while True:
                    data = await loop.run_in_executor(None, f.read, CHUNK)
                    if not data:
                        return
                    yield data
        return view, chunks()


def _name_taken(session: Session, name: str) -> bool:
    return session.scalar(select(Image.id).where(Image.name == name)) is not None


def _insert(session: Session, image: Image) -> None:
    session.add(image)
    session.flush()
