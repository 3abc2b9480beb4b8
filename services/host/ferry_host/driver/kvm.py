"""Which accelerator can run guests on this host, and with which KVM CPU model.

`/dev/kvm` opening is not enough.  On a nested "PVM" KVM host (`kvm_pvm`
module, e.g. some cloud sandboxes) boot-sector guests run under KVM, but a
standard Linux kernel hangs after "Probing EDD" and syslinux stops with a
"KVM internal error ... emulation failure"; even the test guest needed care
(PVM cannot emulate IRET in 32-bit protected mode).  `auto` therefore only
means "the test guest really runs"; operators with real OS images on such a
host should set the accelerator to `tcg`.

`-cpu host` itself can fail: on an AMD EPYC PVM host QEMU 7.2 aborts with
"failed to set MSR 0x10a" (IA32_ARCH_CAPABILITIES), so the probe also tries
`host,-arch-capabilities` and reports the CPU model that worked.  Both
migration ends must use the same model.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ferry_host.driver.cmdline import QEMU_BINARY
from ferry_host.errors import AcceleratorUnavailable

log = logging.getLogger(__name__)

AccelSetting = Literal["kvm", "tcg", "auto"]
KVM_CPU_CANDIDATES = ("host", "host,-arch-capabilities")
PROBE_MARKER = b"FERRY-HB "  # a heartbeat: protected mode and IRQs work


@dataclass(frozen=True)
class KvmProbe:
    usable: bool
    cpu_model: str | None  # the -cpu value that ran the test guest
    flavor: str  # "pvm" (nested, limited), "kvm", or "none"
    reason: str


def kvm_flavor() -> str:
    if Path("/sys/module/kvm_pvm").exists():
        return "pvm"
    if Path("/sys/module/kvm").exists():
        return "kvm"
    return "none"


def dev_kvm_opens() -> bool:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def _boot_test_guest(image: Path, cpu: str, workdir: Path, binary: str, timeout: float) -> str | None:
    """Run the test guest under KVM; None if it heartbeats, else why not."""
    serial = workdir / f"serial-{cpu.replace(',', '_')}.log"
    argv = [binary, "-accel", "kvm", "-cpu", cpu, "-m", "32", "-machine", "pc",
            "-no-user-config", "-nodefaults", "-display", "none", "-nic", "none",
            "-serial", f"file:{serial}",
            "-drive", f"file={image},format=raw,if=virtio"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if serial.exists() and PROBE_MARKER in serial.read_bytes():
                return None
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        else:
            return f"-cpu {cpu}: no heartbeat within {timeout:.0f}s"
    finally:
        if proc.poll() is None:
            proc.kill()
        _, stderr = proc.communicate()
    last = stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
    return f"-cpu {cpu}: QEMU exited ({proc.returncode}): {last[0]}"


@functools.cache
def probe_kvm(binary: str = QEMU_BINARY, timeout: float = 20.0) -> KvmProbe:
    """Boot the test guest under KVM with each candidate CPU model (cached)."""
    flavor = kvm_flavor()
    if not dev_kvm_opens():
        return KvmProbe(False, None, flavor, "/dev/kvm cannot be opened")
    from ferry_host.testguest.build import build_image  # keeps the import graph one-way

    reasons = []
    with tempfile.TemporaryDirectory(prefix="ferry-kvm-probe-") as tmp:
        image = build_image(Path(tmp) / "probe.img", dirty_mb=1, hb_every=5)
        for cpu in KVM_CPU_CANDIDATES:
            why = _boot_test_guest(image, cpu, Path(tmp), binary, timeout)
            if why is None:
                log.info("KVM (%s) runs the test guest with -cpu %s", flavor, cpu)
                return KvmProbe(True, cpu, flavor, f"test guest ran with -cpu {cpu}")
            reasons.append(why)
    log.warning("KVM (%s) unusable: %s", flavor, "; ".join(reasons))
    return KvmProbe(False, None, flavor, "; ".join(reasons))


def probe_accelerator(setting: AccelSetting) -> str:
    """Resolve the configured accelerator to "kvm" or "tcg".

    `auto` picks kvm only when /dev/kvm opens and the test guest heartbeats
    under it (see the module docstring for what that does not prove); an
    explicit `kvm` is trusted once /dev/kvm opens.
    """
    if setting == "tcg":
        return "tcg"
    if setting == "kvm":
        if not dev_kvm_opens():
            raise AcceleratorUnavailable("accelerator kvm: /dev/kvm cannot be opened")
        return "kvm"
    if setting == "auto":
        return "kvm" if probe_kvm().usable else "tcg"
    raise AcceleratorUnavailable(f"unknown accelerator setting {setting!r} (kvm, tcg or auto)")
