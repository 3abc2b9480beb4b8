"""Self-fencing: stop every running guest whose disks are all on shared storage.

Reads `<state-dir>/guests/<id>/spec.json` and `qemu.pid`, checks through a
pidfd that the process is the QEMU the agent started for that guest (its
`-name guest=<id>,...` and `-pidfile`), and SIGKILLs it: no clean shutdown,
the point is that the guest stops writing to the shared disk before the
region restarts it elsewhere. Each fenced guest gets `fenced.json` in its
folder, and `<state-dir>/health/fence.log` gets one JSON line per fence; the
agent keeps a fenced guest stopped (it never starts guests by itself) and
reports it stopped, the region decides where it runs next.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path

from ..driver.cmdline import name_arg
from ..driver.process import read_cmdline

log = logging.getLogger(__name__)

FENCE_RECORD = "fenced.json"
FENCE_LOG = "fence.log"


@dataclass(frozen=True)
class FenceResult:
    guest_id: str
    pid: int
    outcome: str  # "killed", "not running", "skipped (local disks)", "error: ..."


def health_dir(state_dir: Path) -> Path:
    return Path(state_dir) / "health"


def shared_only(spec: dict, shared_storage_id: str, shared_root: Path | None) -> bool:
    """True if the guest has disks and every one is on the shared storage."""
    disks = spec.get("disks") or []
    if not disks:
        return False
    for d in disks:
        if d.get("storage_id") != shared_storage_id:
            return False
        if shared_root is not None:
            path = Path(shared_root) / "disks" / f"{d.get('disk_id')}.qcow2"
            if not path.resolve().is_relative_to(Path(shared_root).resolve()):
                return False
    return True


def is_guest_qemu(cmdline: list[str], guest_id: str, pidfile: Path) -> bool:
    if not cmdline or not Path(cmdline[0]).name.startswith("qemu-system"):
        return False
    pairs = dict(pairwise(cmdline))
    if pairs.get("-name") != name_arg(guest_id):
        return False
    try:
        return Path(pairs.get("-pidfile", "")).resolve() == pidfile.resolve()
    except OSError:
        return False


def _kill(pid: int, guest_id: str, pidfile: Path, wait: float = 5.0) -> str:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return "not running"
    try:
        # Checked after opening: the pidfd pins the process we verify.
        if not is_guest_qemu(read_cmdline(pid), guest_id, pidfile):
            return "not running"
        signal.pidfd_send_signal(fd, signal.SIGKILL)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if not poller.poll(int(wait * 1000)):
            return "error: still alive after SIGKILL"
        return "killed"
    finally:
        os.close(fd)


def fence_guests(state_dir: Path, shared_storage_id: str, shared_root: Path | None,
                 reason: str) -> list[FenceResult]:
    """Kills every running shared-storage guest of this host; returns what it did."""
    state_dir = Path(state_dir)
    root = state_dir / "guests"
    results: list[FenceResult] = []
    if not root.is_dir():
        return results
    for folder in sorted(root.iterdir()):
        spec_file = folder / "spec.json"
        try:
            spec = json.loads(spec_file.read_text())["spec"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        guest_id = spec.get("guest_id", folder.name)
        if not shared_only(spec, shared_storage_id, shared_root):
            results.append(FenceResult(guest_id, 0, "skipped (local disks)"))
            continue
        pidfile = folder / "qemu.pid"
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            results.append(FenceResult(guest_id, 0, "not running"))
            continue
        try:
            outcome = _kill(pid, guest_id, pidfile)
        except OSError as exc:
            outcome = f"error: {exc}"
        results.append(FenceResult(guest_id, pid, outcome))
        if outcome == "killed":
            log.critical("FENCED guest %s (qemu pid %d): %s", guest_id, pid, reason)
            record = {"guest_id": guest_id, "pid": pid, "reason": reason,
                      "time": datetime.now(UTC).isoformat()}
            tmp = folder / f".{FENCE_RECORD}.tmp"
            tmp.write_text(json.dumps(record, indent=2))
            os.replace(tmp, folder / FENCE_RECORD)
        elif outcome.startswith("error"):
            log.critical("FENCING guest %s (qemu pid %d) FAILED: %s", guest_id, pid, outcome)
    hdir = health_dir(state_dir)
    hdir.mkdir(parents=True, exist_ok=True)
    with open(hdir / FENCE_LOG, "a") as f:
        f.write(json.dumps({"time": datetime.now(UTC).isoformat(), "reason": reason,
                            "monotonic": time.monotonic(),
                            "results": [asdict(r) for r in results]}) + "\n")
    return results


def fenced_guests(state_dir: Path) -> list[str]:
    """Guests with a fence record (the agent logs them at start and leaves them stopped)."""
    root = Path(state_dir) / "guests"
    if not root.is_dir():
        return []
    return sorted(f.name for f in root.iterdir() if (f / FENCE_RECORD).is_file())
