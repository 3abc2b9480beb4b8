"""Small helpers shared by the tests: polling with a deadline, climc as a
subprocess against a cluster, heartbeat parsing, free ports."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fixtures.etcd_server import free_port

__all__ = ["CLIMC", "HB", "climc", "free_port", "heartbeat_numbers", "until"]

CLIMC = str(Path(sys.executable).parent / "climc")
HB = re.compile(r"FERRY-HB (\d+)")


def until(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Polls `pred` until it returns something truthy, which is returned; fails at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def climc(cluster: Any, *args: str, check: bool = True,
          timeout: float = 180) -> subprocess.CompletedProcess:
    """Runs the installed `climc` against the cluster's region."""
    env = {**os.environ, "FERRY_REGION": cluster.region_address}
    proc = subprocess.run([CLIMC, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"climc {' '.join(args)} exited {proc.returncode}: "
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def heartbeat_numbers(lines: list[str]) -> list[int]:
    """The counters of the test guest's `FERRY-HB <n>` serial lines."""
    return [int(m.group(1)) for line in lines if (m := HB.search(line))]
