"""Host agent parts on their own: facts, serial logs, validation, disks, image cache."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
from pathlib import Path

import grpc
import pytest

from ferry_common.errors import FailedPrecondition, InvalidArgument, NotFound
from ferry_host import facts, serial
from ferry_host.errmap import to_ferry
from ferry_host.errors import GuestAlreadyRunning, GuestNotFound, InvalidGuestSpec, QemuStartFailed
from ferry_host.imagecache import ImageCache, ImageChecksumMismatch
from ferry_host.model import DiskDef, GuestDef, HostLimits, NicDef, validate
from ferry_host.storage import (
    Storage,
    StorageError,
    StorageKind,
    Storages,
    create_blank,
    create_overlay,
    image_info,
)

from .fake_region import FakeImage, FakeRegion

# ---------------------------------------------------------------- facts


def test_cpu_facts_are_the_real_ones():
    model, microcode = facts.cpu_info()
    text = Path("/proc/cpuinfo").read_text()
    first = next(line for line in text.splitlines() if line.startswith("model name"))
    assert model == first.split(":", 1)[1].strip()
    codes = [ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("microcode")]
    assert microcode == (codes[0] if codes else "")


def test_cpuinfo_without_microcode_reports_empty():
    text = "processor\t: 0\nmodel name\t: Some CPU\nflags\t: fpu\n\nprocessor\t: 1\nmicrocode\t: 0x9\n"
    assert facts.cpu_info(text) == ("Some CPU", "")


def test_memory_and_cpus(tmp_path):
    assert facts.mem_size_mb("MemTotal:       2048000 kB\nMemFree: 1 kB\n") == 2000
    assert facts.mem_size_mb() > 0
    assert facts.cpu_count() == len(os.sched_getaffinity(0))


# ---------------------------------------------------------------- serial logs


def test_tail_returns_complete_lines_only(tmp_path):
    log = tmp_path / "serial.log"
    assert serial.tail(log, 10) == ([], 0)
    log.write_bytes(b"SeaBIOS\r\nFERRY-BOOT\r\nFERRY-HB 1\r\nFERRY-HB 2\r\nFERRY-H")
    lines, offset = serial.tail(log, 2)
    assert lines == ["FERRY-HB 1", "FERRY-HB 2"]
    assert offset == len(b"SeaBIOS\r\nFERRY-BOOT\r\nFERRY-HB 1\r\nFERRY-HB 2\r\n")
    assert serial.tail(log, 100)[0] == ["SeaBIOS", "FERRY-BOOT", "FERRY-HB 1", "FERRY-HB 2"]


def test_tail_of_a_long_log(tmp_path):
    log = tmp_path / "serial.log"
    log.write_bytes(b"".join(f"line {i}\n".encode() for i in range(50_000)))
    lines, offset = serial.tail(log, 3)
    assert lines == ["line 49997", "line 49998", "line 49999"]
    assert offset == log.stat().st_size


async def test_follow_yields_whole_lines_and_ends_in_finally(tmp_path):
    log = tmp_path / "serial.log"
    alive = True
    stream = serial.follow(log, 0, alive=lambda: alive, poll_interval=0.02)
    got: list[str] = []
    offsets: list[int] = []

    async def reader():
        async for lines, offset in stream:
            got.extend(lines)
            offsets.append(offset)

    task = asyncio.create_task(reader())
    await asyncio.sleep(0.05)  # the log does not exist yet: it is waited for
    with open(log, "ab") as f:
        f.write(b"one\r\ntw")
        f.flush()
        await _until(lambda: got == ["one"])
        f.write(b"o\nthree\n")
        f.flush()
        await _until(lambda: got == ["one", "two", "three"])
    assert offsets[-1] == log.stat().st_size
    alive = False
    await asyncio.wait_for(task, 2)


async def test_follow_from_the_end_and_from_a_tail_offset(tmp_path):
    log = tmp_path / "serial.log"
    log.write_bytes(b"old 1\nold 2\npart")
    _, offset = serial.tail(log, 1)
    got = []
    for start in (-1, offset):
        stream = serial.follow(log, start, poll_interval=0.02)
        first = await asyncio.wait_for(_first_after_append(stream, log, b"ial\n"), 5)
        got.append(first)
        await stream.aclose()
    # -1 starts at the unfinished line, so it comes out whole; the tail's offset
    # (taken before) points at the same place, so nothing is skipped or repeated.
    assert got[0] == (["partial"], len(b"old 1\nold 2\npartial\n"))
    assert got[1] == (["partial"], len(b"old 1\nold 2\npartial\n"))


async def _first_after_append(stream, log, data):
    task = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0.05)
    with open(log, "ab") as f:
        f.write(data)
    return await task


async def test_follow_rejects_bad_offsets(tmp_path):
    log = tmp_path / "serial.log"
    log.write_bytes(b"abc\n")
    for bad in (-2, 100):
        with pytest.raises(InvalidArgument) as err:
            await serial.follow(log, bad).__anext__()
        assert err.value.field == "offset"


async def _until(predicate, timeout=5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# ---------------------------------------------------------------- validation

LIMITS = HostLimits(frozenset({"h1-local", "shared0"}), frozenset({"net0"}))


def _def(**kw) -> GuestDef:
    base = dict(guest_id="g1", name="g1", vcpu_count=1, memory_mb=64,
                disks=(DiskDef("d1", 0, "h1-local", 64),), nics=())
    base.update(kw)
    return GuestDef(**base)


@pytest.mark.parametrize("kw,field", [
    (dict(guest_id=""), "spec.guest_id"),
    (dict(guest_id="../etc"), "spec.guest_id"),
    (dict(name=""), "spec.name"),
    (dict(vcpu_count=0), "spec.vcpu_count"),
    (dict(memory_mb=-5), "spec.memory_mb"),
    (dict(disks=()), "spec.disks"),
    (dict(disks=(DiskDef("d1", 0, "nowhere", 64),)), "spec.disks[0].storage_id"),
    (dict(disks=(DiskDef("d1", 0, "h1-local", 0),)), "spec.disks[0].size_mb"),
    (dict(disks=(DiskDef("d/1", 0, "h1-local", 64),)), "spec.disks[0].disk_id"),
    (dict(disks=(DiskDef("d1", 0, "h1-local", 64), DiskDef("d1", 1, "h1-local", 64))),
     "spec.disks[1].disk_id"),
    (dict(disks=(DiskDef("d1", 0, "h1-local", 64, image_id="i1", image_format="vmdk"),)),
     "spec.disks[0].image_format"),
    (dict(disks=(DiskDef("d1", 0, "h1-local", 64, image_id="i1", image_format="raw",
                         image_checksum_sha256="xyz"),)), "spec.disks[0].image_checksum_sha256"),
    (dict(nics=(NicDef("net9", "52:54:00:00:00:01", 0),)), "spec.nics[0].network"),
    (dict(nics=(NicDef("net0", "not-a-mac", 0),)), "spec.nics[0].mac"),
])
def test_validation_names_the_field(kw, field):
    with pytest.raises(InvalidArgument) as err:
        validate(_def(**kw), LIMITS)
    assert err.value.field == field
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_driver_errors_map_to_canonical_codes():
    assert to_ferry(GuestNotFound("g1")).code == grpc.StatusCode.NOT_FOUND
    assert isinstance(to_ferry(GuestNotFound("g1")), NotFound)
    assert isinstance(to_ferry(GuestAlreadyRunning("g1", 5)), FailedPrecondition)
    bad = to_ferry(InvalidGuestSpec("memory_mb", "must be >= 16"))
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT and bad.field == "spec.memory_mb"
    failed = to_ferry(QemuStartFailed("g1", "exited", "qemu: bad option"))
    assert failed.reason == "QEMU_START_FAILED" and "bad option" in failed.message


# ---------------------------------------------------------------- disks


@pytest.fixture
def local(tmp_path) -> Storage:
    s = Storage("h1-local", "local", StorageKind.LOCAL, tmp_path / "local")
    Storages([s])
    return s


async def test_overlay_is_backed_by_the_image_and_resized(local, testguest_image):
    disk = local.disk_path("d1")
    await create_overlay(disk, testguest_image, "raw", 64)
    info = await image_info(disk)
    assert info["format"] == "qcow2"
    assert info["virtual-size"] == 64 * 1024 * 1024
    assert info["backing-filename"] == str(testguest_image.resolve())
    assert info.get("backing-filename-format") == "raw"
    await create_blank(local.disk_path("d2"), 16)
    assert (await image_info(local.disk_path("d2")))["virtual-size"] == 16 * 1024 * 1024


async def test_failed_qemu_img_leaves_no_file_and_says_why(local, tmp_path):
    disk = local.disk_path("d1")
    not_an_image = tmp_path / "garbage.qcow2"
    not_an_image.write_bytes(b"this is not a qcow2 image" * 100)
    with pytest.raises(StorageError) as err:
        await create_overlay(disk, not_an_image, "qcow2", 64)
    assert "qemu-img" in err.value.message and "qcow2" in err.value.message
    assert err.value.code == grpc.StatusCode.INTERNAL
    assert list(local.disks_dir.iterdir()) == []


async def test_overlay_smaller_than_the_image_is_invalid(local, tmp_path):
    big = tmp_path / "big.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(big), "8M"], check=True)
    with pytest.raises(InvalidArgument) as err:
        await create_overlay(local.disk_path("d1"), big, "raw", 4, field="spec.disks[0].size_mb")
    assert err.value.field == "spec.disks[0].size_mb"
    assert list(local.disks_dir.iterdir()) == []


# ---------------------------------------------------------------- image cache


@pytest.fixture
async def region(testguest_image):
    data = testguest_image.read_bytes()
    r = await FakeRegion(images={
        "tg": FakeImage(data),
        "liar": FakeImage(data, checksum="0" * 64),
    }).start()
    yield r
    await r.stop()


async def test_image_is_downloaded_verified_and_cached_once(local, region, testguest_image):
    cache = ImageCache()
    want = hashlib.sha256(testguest_image.read_bytes()).hexdigest()
    paths = await asyncio.gather(*(
        cache.ensure(local, "tg", image_format="raw", checksum=want, region_address=region.address)
        for _ in range(3)))
    assert {p for p in paths} == {local.imagecache_dir / "tg"}
    assert paths[0].read_bytes() == testguest_image.read_bytes()
    assert region.downloads == ["tg"]  # one download for three concurrent callers
    # A second agent sharing the storage finds it cached too.
    await ImageCache().ensure(local, "tg", image_format="raw", checksum=want,
                              region_address=region.address)
    assert region.downloads == ["tg"]
    assert [p.name for p in local.imagecache_dir.iterdir() if p.name.endswith(".part")] == []


async def test_checksum_mismatch_is_an_error_and_leaves_no_file(local, region):
    cache = ImageCache()
    with pytest.raises(ImageChecksumMismatch) as err:
        await cache.ensure(local, "liar", image_format="raw", checksum="",
                           region_address=region.address)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.reason == "IMAGE_CHECKSUM_MISMATCH"
    with pytest.raises(ImageChecksumMismatch):
        await cache.ensure(local, "tg", image_format="raw", checksum="1" * 64,
                           region_address=region.address)
    leftovers = [p.name for p in local.imagecache_dir.iterdir() if not p.name.endswith(".lock")]
    assert leftovers == []


async def test_unknown_image_and_unreachable_region(local, region):
    cache = ImageCache()
    with pytest.raises(Exception) as err:
        await cache.ensure(local, "nope", image_format="raw", checksum="",
                           region_address=region.address)
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(Exception) as err:
        await cache.ensure(local, "tg", image_format="raw", checksum="",
                           region_address="127.0.0.1:1")
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
