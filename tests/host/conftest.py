"""Shared helpers for host-agent tests: the test guest image and a serial
log watcher that polls with a deadline instead of sleeping."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ferry_host.testguest.build import build_image

HEARTBEAT = re.compile(rb"FERRY-HB (\d+)\r\n")
BOOT = b"FERRY-BOOT\r\n"


class SerialLog:
    """Reads a guest's serial log file (complete lines only)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def raw(self) -> bytes:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return b""

    def boots(self) -> int:
        return self.raw().count(BOOT)

    def heartbeats(self) -> list[int]:
        return [int(m) for m in HEARTBEAT.findall(self.raw())]

    def last_heartbeat(self) -> int:
        beats = self.heartbeats()
        return beats[-1] if beats else -1

    async def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                tail = self.raw()[-300:].decode(errors="replace")
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; serial ends: {tail!r}")
            await asyncio.sleep(0.05)

    def wait_for_sync(self, predicate: Callable[[], bool], timeout: float, what: str,
                      alive: Callable[[], bool] = lambda: True) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline or not alive():
                tail = self.raw()[-300:].decode(errors="replace")
                raise AssertionError(f"no {what} within {timeout}s; serial ends: {tail!r}")
            time.sleep(0.05)

    def beats_after(self, count: int, after: int = -1) -> Callable[[], bool]:
        """Predicate: at least `count` heartbeats above `after`, increasing."""
        def check() -> bool:
            beats = [b for b in self.heartbeats() if b > after]
            return len(beats) >= count and beats == sorted(set(beats))
        return check


@pytest.fixture(scope="session")
def testguest_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_image(tmp_path_factory.mktemp("testguest") / "testguest.img")


@pytest.fixture
def make_overlay(tmp_path: Path, testguest_image: Path) -> Callable[[str], Path]:
    """qcow2 overlays on the raw test guest: each guest writes its own."""
    def make(name: str) -> Path:
        out = tmp_path / f"{name}.qcow2"
        subprocess.run(
            ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(testguest_image), "-F", "raw", str(out)],
            check=True,
        )
        return out
    return make
