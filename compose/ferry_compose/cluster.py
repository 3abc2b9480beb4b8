"""The one-machine cluster: etcd, region, scheduler and N host agents as local processes.

State lives in one folder (default `.cluster`):

    cluster.json              plan (addresses, folders) and every process: pid, start time, argv, log
    logs/<name>.log           stdout+stderr of each process
    etcd/                     etcd data
    region/region.db          the region's SQLite inventory
    shared/                   shared storage `shared0`, reached by every agent
    hosts/hostN/state/        agent state (guests/<id>/qemu.pid, serial.log, ...)
    hosts/hostN/local/        agent local storage `hostN-local`

`up` waits until every gRPC health check says SERVING and the region lists every
host online, or tears down what it started and raises with the failing log tail.
`down` stops agents, their QEMU guests, scheduler, region and etcd; it is idempotent.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from . import probes
from .errors import AlreadyRunning, ComposeError, ProcessFailed, StartupTimeout
from .procs import (
    ProcRecord,
    log_tail,
    qemu_from_pidfiles,
    qemu_referencing,
    session_members,
    spawn,
    terminate,
)
from .spec import ClusterSpec, HostSpec, Plan, check_ports_free, plan

log = logging.getLogger(__name__)

STATE_FILE = "cluster.json"
ETCD_BIN = "/usr/bin/etcd"
SHARED_STORAGE_ID = "shared0"
WIRE = "wire0"
NETWORKS = "net0"
STOP_ORDER = ("agent", "health", "scheduler", "region", "etcd")


def executable(name: str, module: str) -> list[str]:
    """A console script of this installation: next to the interpreter, on PATH, or `python -m`."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which(name)
    if found:
        return [found]
    return [sys.executable, "-m", module]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    loop = "127.0.0.0/8,localhost"
    for key in ("no_proxy", "NO_PROXY"):
        env[key] = f"{env[key]},{loop}" if env.get(key) else loop
    return env


class Cluster:
    """A cluster described by a spec (`up`) or found again in its folder (`attach`)."""

    def __init__(self, spec: ClusterSpec | None = None) -> None:
        self.spec = spec or ClusterSpec()
        self.dir = Path(self.spec.dir).expanduser().resolve()
        self.plan: Plan | None = None
        self.records: list[ProcRecord] = []
        self._children: dict[int, subprocess.Popen] = {}
        self._state = "new"

    # ---- the folder -------------------------------------------------------------------------

    @property
    def state_file(self) -> Path:
        return self.dir / STATE_FILE

    @classmethod
    def attach(cls, dir: str | Path = ".cluster") -> Cluster:
        """The cluster recorded in `dir` (raises ComposeError if there is none)."""
        c = cls(ClusterSpec(dir=Path(dir)))
        if not c._load():
            raise ComposeError(f"no cluster recorded in {c.dir} ({STATE_FILE} missing)")
        return c

    def _load(self) -> bool:
        try:
            data = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return False
        except (OSError, ValueError) as e:
            raise ComposeError(f"cannot read {self.state_file}: {e}") from e
        p = data["plan"]
        self.plan = Plan(
            dir=Path(p["dir"]), etcd_client_port=int(p["etcd"].rsplit(":", 1)[1]),
            etcd_peer_port=int(p["etcd_peer_port"]),
            region_port=int(p["region"].rsplit(":", 1)[1]),
            scheduler_port=int(p["scheduler"].rsplit(":", 1)[1]),
            hosts=[HostSpec(index=h["index"], host_id=h["host_id"], name=h["name"], ip=h["ip"],
                            port=h["port"], accel=h["accel"], root=Path(h["root"]),
                            state_dir=Path(h["state_dir"]), local_storage=Path(h["local_storage"]),
                            agent_state_dir=Path(h.get("agent_state_dir") or h["state_dir"]))
                   for h in p["hosts"]],
            link_root=Path(p["link_root"]) if p.get("link_root") else None)
        self.records = [ProcRecord.from_json(r) for r in data.get("processes", [])]
        self._state = data.get("state", "unknown")
        return True

    def _save(self) -> None:
        assert self.plan is not None
        data = {"state": self._state, "updated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "plan": self.plan.to_json(), "processes": [r.to_json() for r in self.records]}
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_file.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.state_file)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as e:
                raise ComposeError(f"another ferry-cluster command is working on {self.dir}") from e
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # ---- addresses for callers --------------------------------------------------------------

    def _need_plan(self) -> Plan:
        if self.plan is None and not self._load():
            raise ComposeError(f"cluster in {self.dir} is not up")
        assert self.plan is not None
        return self.plan

    @property
    def region_address(self) -> str:
        return self._need_plan().region_address

    @property
    def scheduler_address(self) -> str:
        return self._need_plan().scheduler_address

    @property
    def etcd_address(self) -> str:
        return self._need_plan().etcd_address

    @property
    def hosts(self) -> list[HostSpec]:
        return self._need_plan().hosts

    def host(self, name_or_id: str) -> HostSpec:
        for h in self.hosts:
            if name_or_id in (h.name, h.host_id):
                return h
        raise ComposeError(f"no host {name_or_id!r} in this cluster")

    def env(self) -> dict[str, str]:
        """Environment for climc and other clients of this cluster."""
        return {**os.environ, "FERRY_REGION": self.region_address}

    def process(self, name: str) -> ProcRecord:
        for r in self.records:
            if r.name == name:
                return r
        raise ComposeError(f"no process {name!r} in this cluster")

    # ---- up ---------------------------------------------------------------------------------

    def up(self, fresh: bool = False) -> Cluster:
        """Starts everything and waits until it serves; on failure tears down and raises."""
        with self._locked():
            if self._load() and any(r.alive() for r in self.records if r.kind != "qemu"):
                raise AlreadyRunning(f"a cluster is already running in {self.dir} (ferry-cluster down first)")
            if self.records:
                self._down_locked()  # leftovers of a cluster that died: guests, children
            if fresh:
                self._wipe()
            self.plan = plan(self.spec)
            self.records = []
            self._state = "starting"
            try:
                check_ports_free(self.plan)
                self._make_dirs()
                self._save()
                self._start_all()
            except BaseException as e:
                self._state = "failed"
                self._down_locked()
                log.debug("start failed (%s); stopped everything that was started", e)
                raise
            self._state = "up"
            self._save()
        return self

    def _wipe(self) -> None:
        for sub in ("etcd", "region", "shared", "hosts", STATE_FILE):
            path = self.dir / sub
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()

    def _make_dirs(self) -> None:
        p = self.plan
        assert p is not None
        for d in (p.logs, p.region_data, p.etcd_data, p.shared_storage):
            d.mkdir(parents=True, exist_ok=True)
        p.etcd_data.chmod(0o700)  # etcd warns about (and 3.5 refuses) a looser data dir
        for h in p.hosts:
            h.state_dir.mkdir(parents=True, exist_ok=True)
            h.local_storage.mkdir(parents=True, exist_ok=True)
        if p.link_root is not None:
            p.link_root.mkdir(mode=0o700, exist_ok=True)
            (p.link_root / "cluster").unlink(missing_ok=True)
            (p.link_root / "cluster").symlink_to(p.dir)  # says whose links these are
            for h in p.hosts:
                if h.agent_state_dir.is_symlink() or h.agent_state_dir.exists():
                    h.agent_state_dir.unlink()
                h.agent_state_dir.symlink_to(h.state_dir)

    def remove_links(self) -> None:
        """Removes the short symlink folder, if this cluster needed one."""
        p = self.plan
        if p is not None and p.link_root is not None and p.link_root.is_dir():
            shutil.rmtree(p.link_root, ignore_errors=True)

    def _start_all(self) -> None:
        p = self.plan
        assert p is not None
        deadline = time.monotonic() + self.spec.ready_timeout
        etcd = self._spawn("etcd", "etcd", self._etcd_argv(), p.etcd_address)
        self._wait(etcd, lambda: probes.etcd_healthy(p.etcd_client_port), deadline)
        region = self._spawn("region", "region", self._region_argv(), p.region_address)
        self._wait(region, lambda: probes.grpc_serving(p.region_address), deadline)
        sched = self._spawn("scheduler", "scheduler", self._scheduler_argv(), p.scheduler_address)
        self._wait(sched, lambda: probes.grpc_serving(p.scheduler_address), deadline)
        agents = [self._spawn(h.name, "agent", self._agent_argv(h), h.address) for h in p.hosts]
        for rec in agents:
            self._wait(rec, lambda a=rec.address: probes.grpc_serving(a), deadline)
        if self.spec.health_keeper:
            for h in p.hosts:
                self._spawn(f"{h.name}-health", "health", self._keeper_argv(h), h.address)
        ids = [h.host_id for h in p.hosts]
        self._wait(region, lambda: probes.hosts_online(p.region_address, ids), deadline,
                   what="the region to list every host online", watch=[etcd, sched, *agents])

    def _spawn(self, name: str, kind: str, argv: list[str], address: str) -> ProcRecord:
        assert self.plan is not None
        rec, popen = spawn(name, kind, argv, self.plan.logs / f"{name}.log", address, env=child_env(),
                           cwd=self.dir)
        self._children[rec.pid] = popen
        self.records = [r for r in self.records if r.name != name] + [rec]
        self._save()
        log.info("started %s (pid %d) on %s", name, rec.pid, address)
        return rec

    def _wait(self, rec: ProcRecord, probe: Callable[[], tuple[bool, str]], deadline: float,
              what: str = "", watch: list[ProcRecord] | None = None) -> None:
        what = what or f"{rec.name} to serve on {rec.address}"
        detail = ""
        interval = 0.05
        while True:
            for r in [rec, *(watch or [])]:
                if not self._running(r):
                    code = self._exit_code(r)
                    raise ProcessFailed(r.name, f"exited{'' if code is None else f' with code {code}'} "
                                                f"while waiting for {what}", log_tail(r.log))
            ok, detail = probe()
            if ok:
                log.info("ready: %s (%s)", what, detail)
                return
            if time.monotonic() >= deadline:
                raise StartupTimeout(rec.name, f"timed out after {self.spec.ready_timeout:.0f}s waiting for "
                                               f"{what}: {detail}", log_tail(rec.log))
            time.sleep(interval)
            interval = min(interval * 1.5, 0.5)

    def _running(self, rec: ProcRecord) -> bool:
        popen = self._children.get(rec.pid)
        if popen is not None and popen.poll() is not None:
            return False
        return rec.alive()

    def _exit_code(self, rec: ProcRecord) -> int | None:
        popen = self._children.get(rec.pid)
        return popen.poll() if popen is not None else None

    # ---- command lines ----------------------------------------------------------------------

    def _etcd_argv(self) -> list[str]:
        p = self.plan
        assert p is not None
        client, peer = f"http://127.0.0.1:{p.etcd_client_port}", f"http://127.0.0.1:{p.etcd_peer_port}"
        # Also on every host's own address: a keeper reaches etcd through it, so a test can
        # cut one host off etcd with iptables on that address alone.
        listen = ",".join([client] + [f"http://{h.ip}:{p.etcd_client_port}" for h in p.hosts])
        return [ETCD_BIN, "--name", "ferry-etcd", "--data-dir", str(p.etcd_data),
                "--listen-client-urls", listen, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"ferry-etcd={peer}", "--initial-cluster-state", "new",
                "--logger", "zap", "--log-outputs", "stderr"]

    def _region_argv(self) -> list[str]:
        p = self.plan
        assert p is not None
        argv = [*executable("ferry-region", "ferry_region.main"),
                "--listen", p.region_address, "--data-dir", str(p.region_data),
                "--db-url", f"sqlite:///{p.region_data / 'region.db'}",
                "--scheduler", p.scheduler_address, "--etcd", p.etcd_address,
                "--log-level", self.spec.log_level]
        if self.spec.host_down_window is not None:
            argv += ["--host-down-window", str(self.spec.host_down_window)]
        return argv

    def _scheduler_argv(self) -> list[str]:
        p = self.plan
        assert p is not None
        return [*executable("ferry-scheduler", "ferry_scheduler.main"),
                "--listen", p.scheduler_address, "--region", p.region_address,
                "--log-level", self.spec.log_level]

    def _agent_argv(self, h: HostSpec) -> list[str]:
        p = self.plan
        assert p is not None
        argv = [*executable("ferry-host", "ferry_host.main"),
                "--host-id", h.host_id, "--name", h.name, "--listen", h.address,
                "--region", p.region_address,
                "--etcd", "" if self.spec.health_keeper else p.etcd_address,
                "--state-dir", str(h.agent_state_dir), "--local-storage", str(h.local_storage),
                "--shared-storage", str(p.shared_storage), "--shared-storage-id", SHARED_STORAGE_ID,
                "--wire", WIRE, "--networks", NETWORKS, "--accel", h.accel,
                "--log-level", self.spec.log_level]
        if self.spec.lease_ttl is not None:
            argv += ["--lease-ttl", str(self.spec.lease_ttl)]
        if self.spec.copy_stall_timeout is not None:
            argv += ["--copy-stall-timeout", str(self.spec.copy_stall_timeout)]
        return argv

    def _keeper_argv(self, h: HostSpec) -> list[str]:
        p = self.plan
        assert p is not None
        argv = [*executable("ferry-host-health", "ferry_host.health.main"),
                "--host-id", h.host_id, "--etcd", f"{h.ip}:{p.etcd_client_port}",
                "--state-dir", str(h.agent_state_dir), "--agent-address", h.address,
                "--region", p.region_address,
                "--shared-storage", str(p.shared_storage), "--shared-storage-id", SHARED_STORAGE_ID,
                "--log-level", self.spec.log_level]
        if self.spec.lease_ttl is not None:
            argv += ["--lease-ttl", str(self.spec.lease_ttl)]
        if self.spec.fence_after is not None:
            argv += ["--fence-after", str(self.spec.fence_after)]
        return argv

    # ---- down -------------------------------------------------------------------------------

    def down(self) -> list[ProcRecord]:
        """Stops every process and guest of this cluster; returns what was still running."""
        with self._locked():
            self._load()
            return self._down_locked()

    def _down_locked(self) -> list[ProcRecord]:
        stopped: list[ProcRecord] = []
        timeout = self.spec.stop_timeout
        state_dirs = [h.state_dir for h in self.plan.hosts] if self.plan else []
        # Children of the services (QEMU started without a session of its own), found
        # before their parents die and get reparented out of reach.
        children = session_members(self.records)
        for kind in STOP_ORDER:
            group = [r for r in self.records if r.kind == kind and r.alive()]
            stopped += group
            if group:
                terminate(group, timeout, reap=self._children)
            if kind == "agent":
                # Agents leave their guests running on purpose: stop those now.
                guests = self._guests(state_dirs, children)
                stopped += guests
                terminate(guests, timeout)
        # Last sweep: anything still in our sessions or a QEMU using our folder.
        leftovers = [r for r in session_members(self.records) + self._guests(state_dirs, children)
                     if r.alive()]
        if leftovers:
            stopped += leftovers
            terminate(leftovers, 2.0, group=False)
        for popen in self._children.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=1)
        self._children.clear()
        self.remove_links()  # recreated by the next `up`
        if self.plan is not None:
            self._state = "down" if self._state != "failed" else "failed"
            self._save()
        return stopped

    def _guests(self, state_dirs: list[Path], extra: list[ProcRecord]) -> list[ProcRecord]:
        found: dict[int, ProcRecord] = {}
        refs = qemu_referencing(self.dir)
        if self.plan is not None and self.plan.link_root is not None:
            refs += qemu_referencing(self.plan.link_root)
        for r in qemu_from_pidfiles(state_dirs) + refs + extra:
            if r.alive():
                found.setdefault(r.pid, r)
        return list(found.values())

    # ---- status and single processes --------------------------------------------------------

    def status(self, probe: bool = True) -> list[dict]:
        """One row per process (and per running guest): name, kind, pid, address, alive, health."""
        self._need_plan()
        rows = []
        for r in self.records:
            alive = r.alive()
            health = ""
            if probe and alive:
                if r.kind == "etcd":
                    ok, _ = probes.etcd_healthy(self.plan.etcd_client_port, timeout=0.5)  # type: ignore[union-attr]
                    health = "healthy" if ok else "unhealthy"
                elif r.kind == "health":
                    health = self._keeper_health(r.name.removesuffix("-health"))
                else:
                    _, health = probes.grpc_serving(r.address, timeout=0.5)
            rows.append({"name": r.name, "kind": r.kind, "pid": r.pid, "address": r.address,
                         "alive": alive, "health": health, "log": r.log})
        for g in self._guests([h.state_dir for h in self.hosts], []):
            rows.append({"name": g.name, "kind": "qemu", "pid": g.pid, "address": "", "alive": True,
                         "health": "", "log": g.log})
        return rows

    def _keeper_health(self, host_name: str) -> str:
        """"healthy" if the host's keeper renewed its lease within the TTL (its keeper.json)."""
        try:
            data = json.loads((self.host(host_name).state_dir / "health" / "keeper.json").read_text())
            age = time.time() - float(data["last_renewed"])
            return "healthy" if age < float(data.get("lease_ttl", 10)) else f"unhealthy (renewed {age:.0f}s ago)"
        except (OSError, ValueError, KeyError, ComposeError):
            return "unhealthy (no renewal yet)"

    def stop_process(self, name: str, sig: int = signal.SIGTERM, timeout: float | None = None) -> None:
        """Signals one process by name (SIGKILL stands for a crash); waits for it to exit."""
        rec = self.process(name)
        if sig in (signal.SIGTERM, signal.SIGINT):
            terminate([rec], self.spec.stop_timeout if timeout is None else timeout, reap=self._children)
            return
        if not rec.alive():
            return
        os.kill(rec.pid, sig)
        if sig == signal.SIGKILL:
            popen = self._children.get(rec.pid)
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline:
                if popen is not None:
                    popen.poll()  # reap our own child, or it stays a zombie
                if not rec.alive():
                    return
                time.sleep(0.02)
            raise ComposeError(f"{name} (pid {rec.pid}) survived SIGKILL for 5 s")

    def start_process(self, name: str, wait: bool = True, timeout: float = 60.0) -> ProcRecord:
        """Starts a stopped process again with its recorded command line, and waits for SERVING."""
        with self._locked():
            rec = self.process(name)
            if rec.alive():
                raise ComposeError(f"{name} is still running (pid {rec.pid})")
            new = self._spawn(rec.name, rec.kind, rec.argv, rec.address)
        if wait:
            deadline = time.monotonic() + timeout
            if new.kind == "etcd":
                self._wait(new, lambda: probes.etcd_healthy(self.plan.etcd_client_port), deadline)  # type: ignore[union-attr]
            elif new.kind == "health":
                pass  # nothing to probe; callers wait for the host to be online if they need it
            else:
                self._wait(new, lambda: probes.grpc_serving(new.address), deadline)
        return new

    def wait_hosts_online(self, host_ids: list[str] | None = None, timeout: float = 60.0) -> None:
        """Polls the region until the given hosts (default: all) are listed online."""
        ids = host_ids or [h.host_id for h in self.hosts]
        deadline = time.monotonic() + timeout
        detail = ""
        while time.monotonic() < deadline:
            ok, detail = probes.hosts_online(self.region_address, ids)
            if ok:
                return
            time.sleep(0.2)
        raise StartupTimeout("region", f"hosts not online after {timeout:.0f}s: {detail}")

    def __enter__(self) -> Cluster:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()
