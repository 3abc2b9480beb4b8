"""Image upload validation with the real qemu-img, download, delete rules."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from ferry_common.errors import error_info
from ferry_proto.region.v1 import image_service_pb2 as ipb
from ferry_proto.region.v1 import resources_pb2 as r
from ferry_proto.region.v1 import server_service_pb2 as spb

from .conftest import raw_image_bytes

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="qemu-img missing")


def qemu_img(*args: str) -> None:
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def image_files(env) -> list[Path]:
    return sorted(env.region.config.images_dir.iterdir())


async def rejected(env, name: str, data: bytes, fmt: int) -> grpc.aio.AioRpcError:
    before, files = env.counts(), image_files(env)
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await env.upload_image(name, data, fmt)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT, exc.value.details()
    assert env.counts() == before and image_files(env) == files, "nothing stored"
    with pytest.raises(grpc.aio.AioRpcError):
        await env.images.GetImage(ipb.GetImageRequest(id=name))
    return exc.value


async def test_real_qcow2_is_accepted_and_downloads_identically(bare_env, tmp_path):
    path = tmp_path / "disk.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(path), "64M")
    data = path.read_bytes()
    img = await bare_env.upload_image("q1", data, r.DISK_FORMAT_QCOW2)
    assert img.format == r.DISK_FORMAT_QCOW2 and img.status == r.IMAGE_STATUS_ACTIVE
    assert img.virtual_size_mb == 64 and img.size_bytes == len(data)
    assert img.checksum_sha256 == hashlib.sha256(data).hexdigest()

    call = bare_env.images.DownloadImage(ipb.DownloadImageRequest(id=img.id))
    got, first = b"", None
    async for msg in call:
        if first is None:
            first = msg
        got += msg.chunk
    assert first.image.id == img.id and got == data

    listed = (await bare_env.images.ListImages(ipb.ListImagesRequest(search="Q"))).images
    assert [i.name for i in listed] == ["q1"]
    assert (await bare_env.images.GetImage(ipb.GetImageRequest(id="q1"))).image.id == img.id


async def test_raw_boot_image_is_accepted(bare_env):
    data = raw_image_bytes(3 * 1024 * 1024 + 512)
    img = await bare_env.upload_image("raw1", data, r.DISK_FORMAT_RAW)
    assert img.size_bytes == len(data) and img.virtual_size_mb == 4


async def test_text_file_is_rejected_as_raw_and_as_qcow2(bare_env):
    text = b"hello, I am not a disk image\n" * 100
    e = await rejected(bare_env, "txt-raw", text, r.DISK_FORMAT_RAW)
    assert "512" in e.details() or "signature" in e.details()
    e = await rejected(bare_env, "txt-raw2", text[:512], r.DISK_FORMAT_RAW)
    assert "0x55AA" in e.details()
    e = await rejected(bare_env, "txt-qcow2", text, r.DISK_FORMAT_QCOW2)
    assert error_info(e).metadata["field"] == "chunk"
    await rejected(bare_env, "empty", b"", r.DISK_FORMAT_RAW)


async def test_qcow2_with_a_backing_file_is_rejected(bare_env, tmp_path):
    base = tmp_path / "base.raw"
    base.write_bytes(raw_image_bytes())
    overlay = tmp_path / "overlay.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(base), str(overlay))
    e = await rejected(bare_env, "overlay", overlay.read_bytes(), r.DISK_FORMAT_QCOW2)
    assert "backing" in e.details()


async def test_truncated_qcow2_is_rejected(bare_env, tmp_path):
    path = tmp_path / "disk.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(path), "16M")
    e = await rejected(bare_env, "trunc", path.read_bytes()[:100], r.DISK_FORMAT_QCOW2)
    assert e.details()


async def test_qcow2_declared_raw_is_rejected(bare_env, tmp_path):
    path = tmp_path / "disk.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", str(path), "16M")
    await rejected(bare_env, "qasraw", path.read_bytes(), r.DISK_FORMAT_RAW)


async def test_image_in_use_cannot_be_deleted(env):
    resp = await env.servers.CreateServer(env.create_request("user"))
    await env.wait_task(resp.task_id)
    img = (await env.images.GetImage(ipb.GetImageRequest(id="boot"))).image
    assert img.server_count == 1
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await env.images.DeleteImage(ipb.DeleteImageRequest(id="boot"))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(exc.value).metadata["state"] == "in_use"
    d = await env.servers.DeleteServer(spb.DeleteServerRequest(id="user"))
    await env.wait_task(d.task_id)
    gone = (await env.images.DeleteImage(ipb.DeleteImageRequest(id="boot"))).image
    assert gone.id == img.id
    assert not (env.region.config.images_dir / img.id).exists()
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await env.images.GetImage(ipb.GetImageRequest(id=img.id))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
