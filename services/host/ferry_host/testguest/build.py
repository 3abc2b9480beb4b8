"""Build the Ferry test guest disk image from guest.asm.

The boot sector is assembled with nasm at run time (cached by the hash of the
source, so nasm runs once per source version); the parameters live in a
config sector at LBA 1, so changing them never re-assembles anything.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

IMAGE_SIZE = 1024 * 1024  # SeaBIOS cannot read a boot disk much smaller than this
SECTOR = 512
CONFIG_MAGIC = b"FRYCFG"
CONFIG_VERSION = 1
PIT_HZ = 1_193_182
MAILBOX_ADDR = 0x500  # "FERRYCNT" + u32 pass counter, see guest.asm
COUNTER_ADDR = MAILBOX_ADDR + 8

DEFAULT_HB_EVERY = 25  # 25 passes x 10 ms = 4 heartbeat lines per second
DEFAULT_PASS_MS = 10


class BuildError(RuntimeError):
    """nasm or qemu-img failed, or the parameters are out of range."""


@dataclass(frozen=True)
class GuestConfig:
    dirty_start_mb: int = 16
    dirty_mb: int = 16
    hb_every: int = DEFAULT_HB_EVERY
    pass_ms: int = DEFAULT_PASS_MS  # 0 = passes run flat out, no pacing

    def validate(self) -> None:
        # Below 1 MiB live the guest's own code, stack and config sector.
        if self.dirty_start_mb < 1:
            raise BuildError("dirty_start_mb must be >= 1")
        if self.dirty_mb < 0 or self.dirty_start_mb + self.dirty_mb > 3072:
            raise BuildError("the dirty range must end below 3 GiB (PCI hole)")
        if not 1 <= self.hb_every < 2**32:
            raise BuildError("hb_every must be >= 1")
        # The PIT reload register is 16 bits: at most ~54 ms per period.
        if not 0 <= self.pass_ms <= 54:
            raise BuildError("pass_ms must be within 0..54")

    @property
    def min_memory_mb(self) -> int:
        """Guest RAM needed so that the whole dirty range is real memory."""
        return self.dirty_start_mb + self.dirty_mb

    def sector(self) -> bytes:
        reload = round(PIT_HZ * self.pass_ms / 1000)
        packed = struct.pack(
            "<6sHIIIH",
            CONFIG_MAGIC,
            CONFIG_VERSION,
            self.dirty_start_mb,
            self.dirty_mb,
            self.hb_every,
            reload,
        )
        return packed.ljust(SECTOR, b"\0")


def asm_source() -> bytes:
    return resources.files(__package__).joinpath("guest.asm").read_bytes()


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ferry" / "testguest"


def boot_sector() -> bytes:
    """Assemble guest.asm (once per source version) and return the 512 bytes."""
    source = asm_source()
    digest = hashlib.sha256(source).hexdigest()[:16]
    cached = _cache_dir() / f"boot-{digest}.bin"
    if cached.is_file() and cached.stat().st_size == SECTOR:
        return cached.read_bytes()
    nasm = shutil.which("nasm")
    if nasm is None:
        raise BuildError("nasm is not installed")
    with tempfile.TemporaryDirectory(prefix="ferry-testguest-") as tmp:
        src, out = Path(tmp) / "guest.asm", Path(tmp) / "boot.bin"
        src.write_bytes(source)
        proc = subprocess.run(
            [nasm, "-f", "bin", "-o", str(out), str(src)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise BuildError(f"nasm failed: {proc.stderr.strip()}")
        code = out.read_bytes()
    if len(code) != SECTOR or code[-2:] != b"\x55\xaa":
        raise BuildError(f"boot sector is {len(code)} bytes, not a signed 512")
    try:
        _write_atomic(cached, code)
    except OSError:
        pass  # the cache is an optimisation; a read-only home is fine
    return code


def image_bytes(config: GuestConfig) -> bytes:
    config.validate()
    return (boot_sector() + config.sector()).ljust(IMAGE_SIZE, b"\0")


def _write_atomic(path: Path, data: bytes) -> None:
    # Rename over the target: a reader (or a QEMU using it as a backing
    # file) never sees a half-written image.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), 0o644)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_image(
    out: Path,
    dirty_start_mb: int = 16,
    dirty_mb: int = 16,
    hb_every: int = DEFAULT_HB_EVERY,
    pass_ms: int = DEFAULT_PASS_MS,
    fmt: str = "raw",
) -> Path:
    """Write the test guest image to `out` (raw, or qcow2 via qemu-img).

    A raw image already holding the same bytes is left untouched, so an image
    in use as a backing file is never rewritten.
    """
    out = Path(out)
    config = GuestConfig(dirty_start_mb, dirty_mb, hb_every, pass_ms)
    data = image_bytes(config)
    if fmt == "raw":
        if not (out.is_file() and out.read_bytes() == data):
            _write_atomic(out, data)
        return out
    if fmt != "qcow2":
        raise BuildError(f"unsupported format {fmt!r} (raw or qcow2)")
    qemu_img = shutil.which("qemu-img")
    if qemu_img is None:
        raise BuildError("qemu-img is not installed")
    with tempfile.TemporaryDirectory(prefix="ferry-testguest-") as tmp:
        raw = Path(tmp) / "guest.img"
        raw.write_bytes(data)
        staged = out.parent / f".{out.name}.tmp"
        out.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            [qemu_img, "convert", "-f", "raw", "-O", "qcow2", str(raw), str(staged)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            staged.unlink(missing_ok=True)
            raise BuildError(f"qemu-img convert failed: {proc.stderr.strip()}")
        os.replace(staged, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ferry-testguest",
        description="Build the Ferry test guest: a boot sector that dirties a "
        "memory range and prints FERRY-BOOT / FERRY-HB <n> lines on COM1.",
    )
    parser.add_argument("--out", required=True, type=Path, help="image file to write")
    parser.add_argument("--dirty-start-mb", type=int, default=16, help="start of the dirtied range (MiB, >= 1)")
    parser.add_argument("--dirty-mb", type=int, default=16, help="length of the dirtied range (MiB, 0 = none)")
    parser.add_argument("--hb-every", type=int, default=DEFAULT_HB_EVERY, help="passes between heartbeat lines")
    parser.add_argument("--pass-ms", type=int, default=DEFAULT_PASS_MS, help="minimum pass period (0..54 ms, 0 = flat out)")
    parser.add_argument("--format", choices=("raw", "qcow2"), default="raw", help="image format")
    args = parser.parse_args(argv)
    try:
        path = build_image(
            args.out, args.dirty_start_mb, args.dirty_mb, args.hb_every, args.pass_ms, args.format
        )
    except BuildError as exc:
        print(f"ferry-testguest: {exc}", file=sys.stderr)
        return 1
    config = GuestConfig(args.dirty_start_mb, args.dirty_mb)
    print(f"{path} (guest needs >= {config.min_memory_mb} MiB of RAM)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
