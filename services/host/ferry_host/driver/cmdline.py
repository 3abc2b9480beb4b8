"""QEMU command line for a `GuestSpec`.

Deterministic on purpose: a migration destination is started from the same
spec and must get exactly the same device model as the source.
"""

from __future__ import annotations

import json
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ferry_host.driver.base import Accel, DiskBus, DiskSpec, GuestSpec

QEMU_BINARY = "qemu-system-x86_64"
DEFAULT_CPU = {Accel.TCG: "qemu64", Accel.KVM: "host"}


@dataclass(frozen=True)
class GuestPaths:
    """The guest's state folder: `<state_dir>/guests/<id>/`."""

    root: Path

    @classmethod
    def of(cls, state_dir: Path, guest_id: str) -> GuestPaths:
        return cls(Path(state_dir).absolute() / "guests" / guest_id)

    @property
    def qmp_socket(self) -> Path:
        """`<root>/qmp.sock`, or a short stand-in when that path is too long.

        A unix socket path is limited to 107 bytes, and state folders can be
        deep (tests, long host ids). The stand-in name is a hash of the guest
        folder, so an agent restarted on the same state folder finds it again.
        """
        own = self.root / "qmp.sock"
        if len(str(own).encode()) <= UNIX_PATH_MAX:
            return own
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:24]
        return short_socket_dir() / f"{digest}.sock"

    @property
    def pidfile(self) -> Path:
        return self.root / "qemu.pid"

    @property
    def log(self) -> Path:
        return self.root / "qemu.log"


UNIX_PATH_MAX = 107  # sun_path is 108 bytes including the NUL


def short_socket_dir() -> Path:
    """A short folder for QMP sockets whose natural path is too long."""
    for base in (os.environ.get("FERRY_RUN_DIR"), "/run/ferry", f"{tempfile.gettempdir()}/ferry-run"):
        if not base:
            continue
        folder = Path(base) / "qmp"
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(folder, os.W_OK):
            return folder
    raise OSError("no writable folder for QMP sockets (set FERRY_RUN_DIR)")


def opt_escape(value: str | Path) -> str:
    """Escape a value for QEMU's "key=value,key=value" option syntax."""
    return str(value).replace(",", ",,")


def name_arg(guest_id: str) -> str:
    """The -name value; also how `adopt()` recognises our QEMU in /proc."""
    return f"guest={guest_id},debug-threads=on"


def _blockdev_args(disk: DiskSpec) -> list[str]:
    # JSON syntax: file names need no comma escaping.  QEMU's image locking
    # stays on (the default), so two QEMUs can never write one image.
    node = f"drive-{disk.index}"
    filename = str(Path(disk.path).absolute())  # QEMU's cwd is not ours to rely on
    proto = {"driver": "file", "filename": filename, "node-name": f"file-{disk.index}"}
    fmt = {"driver": disk.format, "file": f"file-{disk.index}", "node-name": node}
    if disk.bus == DiskBus.VIRTIO:
        device = f"virtio-blk-pci,drive={node},id=disk-{disk.index}"
    else:
        device = f"ide-hd,drive={node},id=disk-{disk.index},bus=ide.{disk.index // 2},unit={disk.index % 2}"
    # SeaBIOS boots the disk with bootindex=0 (virtio-blk works with it too).
    if disk.index == 0:
        device += ",bootindex=0"
    return ["-blockdev", json.dumps(proto), "-blockdev", json.dumps(fmt), "-device", device]


def _nic_args(spec: GuestSpec) -> list[str]:
    if not spec.nics:
        return ["-nic", "none"]
    args: list[str] = []
    for i, nic in enumerate(spec.nics):
        if nic.ifname:
            netdev = f"tap,id=net{i},ifname={opt_escape(nic.ifname)},script=no,downscript=no"
        else:
            netdev = f"user,id=net{i},restrict=on"
        # romfile= : no iPXE option ROM (not installed everywhere, never needed).
        args += ["-netdev", netdev, "-device", f"{nic.model},netdev=net{i},mac={nic.mac},id=nic{i},romfile="]
    return args


def build_argv(
    spec: GuestSpec,
    paths: GuestPaths,
    incoming: str | None = None,
    kvm_cpu_model: str = DEFAULT_CPU[Accel.KVM],
    binary: str = QEMU_BINARY,
) -> list[str]:
    cpu = spec.cpu_model or (kvm_cpu_model if spec.accel == Accel.KVM else DEFAULT_CPU[Accel.TCG])
    argv = [
        binary,
        "-name", name_arg(spec.id),
        "-machine", spec.machine,
        "-accel", str(spec.accel),
        "-cpu", cpu,
        "-smp", str(spec.vcpus),
        "-m", str(spec.memory_mb),
        "-no-user-config",
        "-nodefaults",
        "-display", "none",
        "-msg", "timestamp=on",
        "-pidfile", str(paths.pidfile),
        "-qmp", f"unix:{opt_escape(paths.qmp_socket)},server=on,wait=off",
        # append=on: the serial log continues across restarts and migrations.
        "-chardev", f"file,id=serial0,path={opt_escape(Path(spec.serial_log).absolute())},append=on",
        "-serial", "chardev:serial0",
    ]
    for disk in sorted(spec.disks, key=lambda d: d.index):
        argv += _blockdev_args(disk)
    argv += _nic_args(spec)
    if incoming is not None:
        argv += ["-incoming", incoming]
    return argv


def is_our_qemu(cmdline: list[str], guest_id: str, paths: GuestPaths) -> bool:
    """True if a /proc cmdline is the QEMU that `build_argv` made for this
    guest and this state folder (several agents may share one machine)."""
    if not cmdline or not Path(cmdline[0]).name.startswith("qemu-system"):
        return False
    pairs = dict(zip(cmdline, cmdline[1:]))
    return pairs.get("-name") == name_arg(guest_id) and pairs.get("-pidfile") == str(paths.pidfile)
