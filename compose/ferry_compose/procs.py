"""Local processes: start them detached, know them again by PID + start time, stop them.

A PID alone is not an identity: after a reboot or a long time it may belong to
someone else. Every record keeps the kernel's start time of the process
(/proc/<pid>/stat field 22), and nothing is signalled unless both match.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import ProcessFailed


@dataclass
class ProcStat:
    pid: int
    state: str
    ppid: int
    pgid: int
    sid: int
    starttime: int


def read_stat(pid: int) -> ProcStat | None:
    """The parts of /proc/<pid>/stat we use, or None if the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    rest = raw[raw.rindex(")") + 2:].split()
    return ProcStat(pid=pid, state=rest[0], ppid=int(rest[1]), pgid=int(rest[2]),
                    sid=int(rest[3]), starttime=int(rest[19]))


def read_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def is_qemu(pid: int) -> bool:
    argv = read_cmdline(pid)
    return bool(argv) and "qemu" in os.path.basename(argv[0])


def all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


@dataclass
class ProcRecord:
    """A process this launcher started (or a guest it found), as kept in cluster.json."""

    name: str
    kind: str  # etcd | region | scheduler | agent | qemu
    pid: int
    starttime: int
    address: str
    argv: list[str]
    log: str

    def alive(self) -> bool:
        st = read_stat(self.pid)
        return st is not None and st.starttime == self.starttime and st.state not in ("Z", "X")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> ProcRecord:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def spawn(name: str, kind: str, argv: list[str], log: Path, address: str,
          env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[ProcRecord, subprocess.Popen]:
    """Starts `argv` in its own session, output appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab", buffering=0) as out:
        out.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} start: {' '.join(argv)}\n".encode())
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, env=env, cwd=cwd, close_fds=True)
        except OSError as e:
            raise ProcessFailed(name, f"cannot start {argv[0]}: {e}") from e
    st = read_stat(proc.pid)
    # A process that already died is still a zombie child of ours, so stat exists.
    starttime = st.starttime if st is not None else 0
    return ProcRecord(name=name, kind=kind, pid=proc.pid, starttime=starttime, address=address,
                      argv=argv, log=str(log)), proc


def log_tail(path: str | Path, lines: int = 40) -> str:
    try:
        data = Path(path).read_bytes()[-64 * 1024:]
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def _signal(rec: ProcRecord, sig: int, group: bool) -> bool:
    if not rec.alive():
        return False
    try:
        if group:
            os.killpg(rec.pid, sig)  # the process is its session's and group's leader
        else:
            os.kill(rec.pid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        os.kill(rec.pid, sig)
    return True


def session_members(records: list[ProcRecord]) -> list[ProcRecord]:
    """Live processes in the sessions our records lead (their children, e.g. QEMU).

    A session id is the leader's PID; a member must have started no earlier than
    the leader did, which rules out a reused session id.
    """
    by_sid = {r.pid: r for r in records if r.kind != "qemu"}
    found = []
    for pid in all_pids():
        st = read_stat(pid)
        if st is None or st.state in ("Z", "X") or st.sid not in by_sid or pid in by_sid:
            continue
        leader = by_sid[st.sid]
        if st.starttime >= leader.starttime:
            found.append(ProcRecord(name=f"{leader.name}/child", kind="child", pid=pid,
                                    starttime=st.starttime, address="", argv=read_cmdline(pid), log=""))
    return found


def qemu_from_pidfiles(state_dirs: list[Path]) -> list[ProcRecord]:
    """QEMU processes named by `<state-dir>/guests/*/qemu.pid`, checked to be QEMU."""
    found = []
    for sd in state_dirs:
        for pidfile in sorted(Path(sd).glob("guests/*/qemu.pid")):
            try:
                pid = int(pidfile.read_text().strip() or "0")
            except (OSError, ValueError):
                continue
            st = read_stat(pid) if pid > 0 else None
            if st is None or st.state in ("Z", "X") or not is_qemu(pid):
                continue
            found.append(ProcRecord(name=f"guest {pidfile.parent.name}", kind="qemu", pid=pid,
                                    starttime=st.starttime, address="", argv=read_cmdline(pid),
                                    log=str(pidfile.parent / "qemu.log")))
    return found


def qemu_referencing(folder: Path) -> list[ProcRecord]:
    """QEMU processes whose command line names a path inside `folder` (disks, QMP sockets)."""
    needle = str(Path(folder).resolve()) + os.sep
    found = []
    for pid in all_pids():
        if pid == os.getpid() or not is_qemu(pid):
            continue
        argv = read_cmdline(pid)
        if any(needle in a for a in argv):
            st = read_stat(pid)
            if st is not None and st.state not in ("Z", "X"):
                found.append(ProcRecord(name=f"qemu {pid}", kind="qemu", pid=pid, starttime=st.starttime,
                                        address="", argv=argv, log=""))
    return found


def terminate(records: list[ProcRecord], timeout: float, group: bool = False,
              reap: dict[int, subprocess.Popen] | None = None) -> list[ProcRecord]:
    """SIGTERM all, wait up to `timeout`, then SIGKILL (the whole group); returns the killed ones."""
    live = [r for r in records if _signal(r, signal.SIGTERM, group=group)]
    deadline = time.monotonic() + timeout
    while live and time.monotonic() < deadline:
        _reap(reap)
        live = [r for r in live if r.alive()]
        if live:
            time.sleep(0.05)
    for r in live:
        _signal(r, signal.SIGKILL, group=True)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        _reap(reap)
        if not any(r.alive() for r in live):
            break
        time.sleep(0.05)
    return live


def _reap(children: dict[int, subprocess.Popen] | None) -> None:
    """Collects exit statuses of our own children so they don't linger as zombies."""
    if not children:
        return
    for p in children.values():
        p.poll()
