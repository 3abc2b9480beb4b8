"""QmpDriver against real QEMU processes running the test guest."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from ferry_host.driver import Accel, DiskBus, DiskSpec, GuestSpec, LinkState, NicSpec, QmpDriver, QmpLink
from ferry_host.driver.cmdline import GuestPaths, build_argv, is_our_qemu, name_arg
from ferry_host.driver.kvm import probe_accelerator, probe_kvm
from ferry_host.errors import (
    AcceleratorUnavailable,
    GuestAlreadyRunning,
    GuestNotFound,
    HostError,
    InvalidGuestSpec,
    LinkStateError,
    QemuStartFailed,
    QmpCommandFailed,
)
from ferry_host.testguest.build import COUNTER_ADDR

from .conftest import SerialLog

MakeSpec = Callable[..., GuestSpec]


def _pids_of_guest(guest_id: str, paths: GuestPaths) -> list[int]:
    """Live processes that are QEMU for this guest and state folder."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = [a.decode() for a in (entry / "cmdline").read_bytes().split(b"\0")[:-1]]
            except OSError:
                continue
            if is_our_qemu(argv, guest_id, paths):
                pids.append(int(entry.name))
    return pids


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
async def driver(state_dir: Path) -> AsyncIterator[QmpDriver]:
    drv = QmpDriver(state_dir, start_timeout=15)
    yield drv
    # End what the test left running: only guests of this state folder.
    await drv.detach_all()
    cleaner = QmpDriver(state_dir)
    for guest_id in cleaner.list_running():
        await cleaner.stop(guest_id, timeout=2)


@pytest.fixture
def make_spec(tmp_path: Path, make_overlay: Callable[[str], Path]) -> MakeSpec:
    def make(guest_id: str = "g1", **overrides: object) -> GuestSpec:
        fields: dict[str, object] = dict(
            id=guest_id, name=f"test {guest_id}", vcpus=1, memory_mb=64,
            disks=[DiskSpec(make_overlay(guest_id))],
            serial_log=tmp_path / f"{guest_id}.serial", accel=Accel.TCG,
        )
        fields.update(overrides)
        return GuestSpec(**fields)  # type: ignore[arg-type]
    return make


# ---- pure units -----------------------------------------------------------


def test_argv_is_deterministic_and_recognisable(tmp_path: Path) -> None:
    spec = GuestSpec(
        id="vm-1", name="x", vcpus=2, memory_mb=128, serial_log=tmp_path / "a,b.log",
        disks=[DiskSpec(tmp_path / "d1.qcow2", index=1, bus=DiskBus.IDE), DiskSpec(tmp_path / "d0.raw", "raw")],
        nics=[NicSpec("52:54:00:00:00:01")],
    )
    paths = GuestPaths.of(tmp_path / "s", "vm-1")
    argv = build_argv(spec, paths, incoming="defer")
    assert argv == build_argv(spec, paths, incoming="defer")
    assert argv[argv.index("-name") + 1] == name_arg("vm-1")
    assert "file,id=serial0,path=" + str(tmp_path / "a,,b.log") + ",append=on" in argv
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]
    assert devices[0].startswith("virtio-blk-pci,drive=drive-0") and devices[0].endswith("bootindex=0")
    assert devices[1].startswith("ide-hd,drive=drive-1") and "bootindex" not in devices[1]
    assert "user,id=net0,restrict=on" in argv and "-nic" not in argv
    assert argv[-2:] == ["-incoming", "defer"]
    assert is_our_qemu(argv, "vm-1", paths)
    assert not is_our_qemu(argv, "vm-2", paths)
    assert not is_our_qemu(argv, "vm-1", GuestPaths.of(tmp_path / "other-agent", "vm-1"))
    assert not is_our_qemu(["sleep", "-name", name_arg("vm-1")], "vm-1", paths)


@pytest.mark.parametrize("bad", [{"id": "a,b"}, {"id": "../x"}, {"vcpus": 0}, {"disks": []}])
def test_spec_validation(tmp_path: Path, bad: dict[str, object]) -> None:
    fields: dict[str, object] = dict(id="ok", name="n", vcpus=1, memory_mb=64,
                                     disks=[DiskSpec(tmp_path / "d")], serial_log=tmp_path / "s")
    fields.update(bad)
    with pytest.raises(InvalidGuestSpec):
        GuestSpec(**fields).validate()  # type: ignore[arg-type]


async def test_link_state_errors_carry_both_states(tmp_path: Path) -> None:
    link = QmpLink("g", tmp_path / "nothing.sock")
    with pytest.raises(LinkStateError) as err:
        await link.execute("query-status")
    assert (err.value.current, err.value.required) == ("IDLE", "CONNECTED")
    with pytest.raises(HostError):  # no socket: a QmpError, and back to IDLE
        await link.connect(timeout=1)
    assert link.state is LinkState.IDLE
    await link.close()
    await link.close()  # idempotent
    assert link.state is LinkState.CLOSED
    with pytest.raises(LinkStateError) as err:
        await link.connect(timeout=1)
    assert err.value.current == "CLOSED"


def test_probe_accelerator_settings() -> None:
    assert probe_accelerator("tcg") == "tcg"
    with pytest.raises(AcceleratorUnavailable):
        probe_accelerator("fast")  # type: ignore[arg-type]


async def test_unknown_guest(driver: QmpDriver) -> None:
    assert await driver.status("nope") is None
    assert await driver.adopt("nope") is None
    assert await driver.stop("nope") is False
    with pytest.raises(GuestNotFound):
        await driver.qmp("nope", "query-status")


# ---- real QEMU ------------------------------------------------------------


@pytest.mark.qemu
async def test_start_heartbeats_status_and_stop(driver: QmpDriver, make_spec: MakeSpec) -> None:
    spec = make_spec()
    runtime = await driver.start(spec)
    assert runtime.run_state == "running"
    serial = SerialLog(spec.serial_log)
    await serial.wait_for(serial.beats_after(3), 10, "3 increasing heartbeats")
    assert serial.boots() == 1
    status = await driver.status(spec.id)
    assert status is not None and status.run_state == "running" and status.pid == runtime.pid
    assert driver.list_running() == [spec.id]

    # The counter is also in guest memory: magic "FERRYCNT", then the count.
    out = await driver.qmp(spec.id, "human-monitor-command",
                           **{"command-line": f"xp /3wx {COUNTER_ADDR - 8:#x}"})
    words = [int(w, 16) for w in out.split(":")[1].split()]
    assert words[0].to_bytes(4, "little") + words[1].to_bytes(4, "little") == b"FERRYCNT"
    assert words[2] >= serial.heartbeats()[-1]

    with pytest.raises(QmpCommandFailed) as err:
        await driver.qmp(spec.id, "no-such-command")
    assert err.value.error_class == "CommandNotFound"

    assert await driver.stop(spec.id) is True
    assert not Path(f"/proc/{runtime.pid}").exists()  # exited and reaped
    assert await driver.status(spec.id) is None
    assert driver.list_running() == []
    assert not driver.paths(spec.id).pidfile.exists()


@pytest.mark.qemu
async def test_adopt_after_agent_restart(driver: QmpDriver, make_spec: MakeSpec, state_dir: Path) -> None:
    spec = make_spec()
    runtime = await driver.start(spec)
    serial = SerialLog(spec.serial_log)
    await serial.wait_for(serial.beats_after(2), 10, "heartbeats")
    await driver.detach_all()  # the agent goes away; the guest must not

    restarted = QmpDriver(state_dir)
    try:
        assert restarted.list_running() == [spec.id]
        assert await restarted.status(spec.id) is None  # not attached yet
        adopted = await restarted.adopt(spec.id)
        assert adopted is not None
        assert (adopted.pid, adopted.run_state) == (runtime.pid, "running")
        seen = serial.last_heartbeat()
        await serial.wait_for(serial.beats_after(2, after=seen), 10, "heartbeats after adopt")
        assert serial.boots() == 1  # kept counting: never rebooted
        assert await restarted.stop(spec.id, timeout=5) is True
        assert not Path(f"/proc/{runtime.pid}").exists()
    finally:
        await restarted.detach_all()


@pytest.mark.qemu
async def test_adopt_refuses_a_foreign_pid(driver: QmpDriver, state_dir: Path) -> None:
    paths = driver.paths("g1")
    paths.root.mkdir(parents=True)
    foreign = subprocess.Popen(["sleep", "30"])
    try:
        paths.pidfile.write_text(f"{foreign.pid}\n")
        assert driver.list_running() == []
        assert await driver.adopt("g1") is None
        assert await driver.stop("g1") is False
        assert foreign.poll() is None  # untouched
    finally:
        os.kill(foreign.pid, signal.SIGKILL)
        foreign.wait()


@pytest.mark.qemu
async def test_stop_kills_a_frozen_qemu(driver: QmpDriver, make_spec: MakeSpec) -> None:
    spec = make_spec()
    runtime = await driver.start(spec)
    os.kill(runtime.pid, signal.SIGSTOP)  # QMP can no longer answer
    t0 = time.monotonic()
    assert await driver.stop(spec.id, timeout=2) is True
    assert time.monotonic() - t0 < 2 + 5
    assert not Path(f"/proc/{runtime.pid}").exists()


@pytest.mark.qemu
async def test_broken_disk_fails_cleanly(driver: QmpDriver, make_spec: MakeSpec, tmp_path: Path) -> None:
    spec = make_spec(disks=[DiskSpec(tmp_path / "missing.qcow2")])
    with pytest.raises(QemuStartFailed) as err:
        await driver.start(spec)
    assert "missing.qcow2" in str(err.value) and "exited" in err.value.reason
    assert "No such file" in err.value.log_tail
    assert _pids_of_guest(spec.id, driver.paths(spec.id)) == []
    assert driver.list_running() == []


@pytest.mark.qemu
async def test_start_twice_is_refused(driver: QmpDriver, make_spec: MakeSpec, state_dir: Path) -> None:
    spec = make_spec()
    runtime = await driver.start(spec)
    with pytest.raises(GuestAlreadyRunning) as err:
        await driver.start(spec)
    assert err.value.pid == runtime.pid
    # Also from another driver instance that has not adopted it.
    with pytest.raises(GuestAlreadyRunning):
        await QmpDriver(state_dir).start(spec)
    assert _pids_of_guest(spec.id, driver.paths(spec.id)) == [runtime.pid]


@pytest.mark.qemu
async def test_incoming_defer_starts_paused(driver: QmpDriver, make_spec: MakeSpec) -> None:
    spec = make_spec()
    runtime = await driver.start(spec, incoming="defer")
    assert runtime.run_state == "inmigrate"
    with driver.listener(spec.id, ("STOP", "RESUME")):
        pass  # listeners attach and detach cleanly on a live link
    assert SerialLog(spec.serial_log).boots() == 0


@pytest.mark.qemu
async def test_kvm_guest(driver: QmpDriver, make_spec: MakeSpec) -> None:
    probe = probe_kvm()
    if not probe.usable or probe.cpu_model is None:
        pytest.skip(f"KVM unusable here: {probe.reason}")
    assert probe_accelerator("auto") == "kvm"
    driver.kvm_cpu_model = probe.cpu_model
    spec = make_spec(accel=Accel.KVM)
    await driver.start(spec)
    serial = SerialLog(spec.serial_log)
    await serial.wait_for(serial.beats_after(3), 15, "heartbeats under KVM")
    assert await driver.stop(spec.id) is True


@pytest.mark.qemu
async def test_missing_binary_fails_cleanly(state_dir: Path, make_spec: MakeSpec) -> None:
    drv = QmpDriver(state_dir, qemu_binary="/nonexistent/qemu-system-x86_64")
    with pytest.raises(QemuStartFailed, match="cannot run"):
        await drv.start(make_spec())


@pytest.mark.qemu
async def test_image_locking_refuses_a_second_writer(driver: QmpDriver, make_spec: MakeSpec) -> None:
    # The same disk under two guest ids: QEMU's image locks (left on) must
    # refuse the second one -- a VM's disk is never written twice.
    first = make_spec("g1")
    await driver.start(first)
    second = make_spec("g2", disks=first.disks)
    with pytest.raises(QemuStartFailed) as err:
        await driver.start(second)
    assert "lock" in err.value.log_tail
    assert driver.list_running() == ["g1"]


AGENT = """
import asyncio, os, pickle, sys
from ferry_host.driver import QmpDriver
spec = pickle.loads(bytes.fromhex(sys.argv[2]))
async def main():
    runtime = await QmpDriver(sys.argv[1]).start(spec)
    print(runtime.pid, flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""


@pytest.mark.qemu
async def test_guest_survives_agent_kill(driver: QmpDriver, make_spec: MakeSpec, state_dir: Path) -> None:
    import pickle

    import ferry_host

    spec = make_spec()
    env = dict(os.environ, PYTHONPATH=str(Path(ferry_host.__file__).parents[1]))
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT, str(state_dir), pickle.dumps(spec).hex()],
        stdout=subprocess.PIPE, env=env, text=True,
    )
    try:
        assert agent.stdout is not None
        pid = int(agent.stdout.readline())
    finally:
        os.kill(agent.pid, signal.SIGKILL)  # a crash: no cleanup runs at all
        agent.wait()
    serial = SerialLog(spec.serial_log)
    await serial.wait_for(serial.beats_after(2), 10, "heartbeats after the agent died")
    adopted = await driver.adopt(spec.id)
    assert adopted is not None and adopted.pid == pid and adopted.run_state == "running"
    assert await driver.stop(spec.id) is True


@pytest.mark.qemu
async def test_stop_with_zero_timeout_kills_at_once(driver: QmpDriver, make_spec: MakeSpec) -> None:
    spec = make_spec()
    runtime = await driver.start(spec)
    t0 = time.monotonic()
    assert await driver.stop(spec.id, timeout=0) is True
    assert time.monotonic() - t0 < 2
    assert not Path(f"/proc/{runtime.pid}").exists()
