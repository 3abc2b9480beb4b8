"""The test guest image: its layout, its builder, and that it really runs."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry_host.driver.kvm import probe_kvm
from ferry_host.testguest.build import (
    IMAGE_SIZE,
    BuildError,
    GuestConfig,
    boot_sector,
    build_image,
    main,
)

from .conftest import SerialLog


def test_boot_sector_is_signed_and_fits() -> None:
    code = boot_sector()
    assert len(code) == 512 and code[-2:] == b"\x55\xaa"


def test_image_layout_and_config_sector(tmp_path: Path) -> None:
    image = build_image(tmp_path / "g.img", dirty_start_mb=20, dirty_mb=8, hb_every=7, pass_ms=5)
    data = image.read_bytes()
    assert len(data) == IMAGE_SIZE  # SeaBIOS needs the padding
    magic, version, start, length, every, reload = struct.unpack_from("<6sHIIIH", data, 512)
    assert (magic, version, start, length, every) == (b"FRYCFG", 1, 20, 8, 7)
    assert reload == round(1_193_182 * 5 / 1000)


def test_identical_image_is_not_rewritten(tmp_path: Path) -> None:
    # An image in use as a backing file must not be replaced under QEMU.
    image = build_image(tmp_path / "g.img")
    inode = image.stat().st_ino
    build_image(image)
    assert image.stat().st_ino == inode
    build_image(image, dirty_mb=4)
    assert image.stat().st_ino != inode


@pytest.mark.parametrize(
    "kwargs", [{"dirty_start_mb": 0}, {"hb_every": 0}, {"pass_ms": 60}, {"dirty_mb": -1}]
)
def test_bad_parameters_are_refused(tmp_path: Path, kwargs: dict[str, int]) -> None:
    with pytest.raises(BuildError):
        build_image(tmp_path / "g.img", **kwargs)


def test_cli_writes_qcow2(tmp_path: Path) -> None:
    out = tmp_path / "g.qcow2"
    assert main(["--out", str(out), "--dirty-mb", "4", "--format", "qcow2"]) == 0
    info = subprocess.run(["qemu-img", "info", str(out)], capture_output=True, text=True, check=True)
    assert "file format: qcow2" in info.stdout
    assert main(["--out", str(out), "--hb-every", "0"]) == 1


def test_min_memory() -> None:
    assert GuestConfig(dirty_start_mb=16, dirty_mb=48).min_memory_mb == 64


@pytest.fixture
def run_qemu() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes appended here are killed (by PID) after the test."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _boot(image: Path, serial: Path, accel: list[str], procs: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["qemu-system-x86_64", *accel, "-m", "64", "-no-user-config", "-nodefaults",
         "-display", "none", "-serial", f"file:{serial}",
         "-drive", f"file={image},format=raw,if=virtio"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    procs.append(proc)
    return proc


def _check_heartbeats(proc: subprocess.Popen[bytes], serial: SerialLog, timeout: float) -> None:
    alive = lambda: proc.poll() is None  # noqa: E731
    serial.wait_for_sync(lambda: serial.boots() == 1, timeout, "FERRY-BOOT", alive)
    serial.wait_for_sync(serial.beats_after(3), timeout, "3 increasing heartbeats", alive)
    assert serial.boots() == 1


@pytest.mark.qemu
def test_boots_and_heartbeats_under_tcg(tmp_path: Path, testguest_image: Path, run_qemu: list) -> None:
    serial = SerialLog(tmp_path / "serial.log")
    proc = _boot(testguest_image, serial.path, ["-accel", "tcg", "-cpu", "qemu64"], run_qemu)
    _check_heartbeats(proc, serial, timeout=10)
    # Paced passes: a few lines per second, not a flood, on any accelerator.
    size, beats, t0 = len(serial.raw()), serial.last_heartbeat(), time.monotonic()
    serial.wait_for_sync(lambda: time.monotonic() - t0 > 1.0, 3, "one second")
    rate = (len(serial.raw()) - size) / (time.monotonic() - t0)
    assert 0 < rate < 2048, f"serial log grows {rate:.0f} B/s"
    assert serial.last_heartbeat() > beats


@pytest.mark.qemu
def test_no_dirtying_still_heartbeats(tmp_path: Path, run_qemu: list) -> None:
    image = build_image(tmp_path / "idle.img", dirty_mb=0, hb_every=5)
    serial = SerialLog(tmp_path / "serial.log")
    proc = _boot(image, serial.path, ["-accel", "tcg", "-cpu", "qemu64"], run_qemu)
    _check_heartbeats(proc, serial, timeout=10)
    assert all(b % 5 == 0 for b in serial.heartbeats())


@pytest.mark.qemu
def test_boots_and_heartbeats_under_kvm(tmp_path: Path, testguest_image: Path, run_qemu: list) -> None:
    probe = probe_kvm()
    if not probe.usable:
        pytest.skip(f"KVM unusable here: {probe.reason}")
    assert probe.cpu_model is not None
    serial = SerialLog(tmp_path / "serial.log")
    proc = _boot(testguest_image, serial.path, ["-accel", "kvm", "-cpu", probe.cpu_model], run_qemu)
    _check_heartbeats(proc, serial, timeout=15)  # SeaBIOS alone takes seconds under PVM
