"""What a one-machine cluster is made of, and where each part listens.

Port layout from a base port B (the defaults in docs/ARCHITECTURE.md for B = 7700):
region B, scheduler B+10, every host agent B+20 on its own loopback address
(127.0.0.11, 127.0.0.12, ...), etcd client B+30 and peer B+31. With B = 0 every
port is a free one chosen at `up`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import SpecError

ACCELS = ("auto", "kvm", "tcg")
DEFAULT_BASE_PORT = 7700
HOST_IP_OFFSET = 10  # agent i (1-based) listens on 127.0.0.(10+i)
MAX_HOSTS = 200
# QEMU's QMP socket lives at <state-dir>/guests/<server-id>/qmp.sock, and a unix
# socket path holds at most 107 bytes: the cluster folder must leave room for it.
UNIX_PATH_MAX = 107
GUEST_SOCKET_SUFFIX = len("/guests/") + 36 + len("/qmp.sock")  # server ids are UUIDs


@dataclass
class ClusterSpec:
    """The input: what to run. Everything else is derived by `plan()`."""

    dir: Path = Path(".cluster")
    hosts: int = 3
    accel: str = "auto"
    accel_per_host: list[str] | None = None
    base_port: int = DEFAULT_BASE_PORT
    log_level: str = "INFO"
    lease_ttl: int | None = None
    #: Run one `ferry-host-health` keeper per host (it holds the etcd lease and fences);
    #: the agents then run without a lease of their own. False: agents keep the lease.
    health_keeper: bool = True
    #: Keeper fencing deadline in seconds (< lease TTL); None = the keeper's default (0.6 TTL).
    fence_after: float | None = None
    #: Region host-down confirmation window in seconds; None = the region's default.
    host_down_window: float | None = None
    #: Agents' --copy-stall-timeout in seconds; None = the agent's default.
    copy_stall_timeout: float | None = None
    ready_timeout: float = 120.0
    stop_timeout: float = 10.0

    def validate(self) -> None:
        if not 1 <= self.hosts <= MAX_HOSTS:
            raise SpecError(f"hosts must be within 1..{MAX_HOSTS}, got {self.hosts}")
        if self.accel not in ACCELS:
            raise SpecError(f"accel must be one of {', '.join(ACCELS)}, got {self.accel!r}")
        if self.accel_per_host is not None:
            if len(self.accel_per_host) != self.hosts:
                raise SpecError(
                    f"accel_per_host names {len(self.accel_per_host)} accelerators for {self.hosts} hosts")
            bad = [a for a in self.accel_per_host if a not in ACCELS]
            if bad:
                raise SpecError(f"accel_per_host: unknown accelerator(s) {bad}; use {', '.join(ACCELS)}")
        if self.base_port != 0 and not 1024 <= self.base_port <= 65535 - 40:
            raise SpecError(f"base_port must be 0 (free ports) or within 1024..65495, got {self.base_port}")
        if self.lease_ttl is not None and self.lease_ttl < 2:
            raise SpecError("lease_ttl must be >= 2 seconds")
        if self.fence_after is not None and not 0 < self.fence_after < (self.lease_ttl or 10):
            raise SpecError("fence_after must be > 0 and below the lease TTL")

    def accel_of(self, index: int) -> str:
        """Accelerator of host `index` (1-based)."""
        if self.accel_per_host is not None:
            return self.accel_per_host[index - 1]
        return self.accel


@dataclass
class HostSpec:
    """One host agent as planned: identity, address and folders."""

    index: int
    host_id: str
    name: str
    ip: str
    port: int
    accel: str
    root: Path
    state_dir: Path
    local_storage: Path
    #: What the agent is given as --state-dir: state_dir itself, or a short symlink to it.
    agent_state_dir: Path

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"

    def to_json(self) -> dict:
        d = asdict(self)
        for k in ("root", "state_dir", "local_storage", "agent_state_dir"):
            d[k] = str(d[k])
        d["address"] = self.address
        return d


@dataclass
class Plan:
    """The resolved cluster: absolute folders and concrete ports."""

    dir: Path
    etcd_client_port: int
    etcd_peer_port: int
    region_port: int
    scheduler_port: int
    hosts: list[HostSpec] = field(default_factory=list)
    #: Folder of short symlinks to the agents' state dirs, when the real paths are too long.
    link_root: Path | None = None

    @property
    def etcd_address(self) -> str:
        return f"127.0.0.1:{self.etcd_client_port}"

    @property
    def region_address(self) -> str:
        return f"127.0.0.1:{self.region_port}"

    @property
    def scheduler_address(self) -> str:
        return f"127.0.0.1:{self.scheduler_port}"

    @property
    def shared_storage(self) -> Path:
        return self.dir / "shared"

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    @property
    def region_data(self) -> Path:
        return self.dir / "region"

    @property
    def etcd_data(self) -> Path:
        return self.dir / "etcd"

    def to_json(self) -> dict:
        return {
            "dir": str(self.dir),
            "etcd": self.etcd_address,
            "etcd_peer_port": self.etcd_peer_port,
            "region": self.region_address,
            "scheduler": self.scheduler_address,
            "shared_storage": str(self.shared_storage),
            "hosts": [h.to_json() for h in self.hosts],
            "link_root": str(self.link_root) if self.link_root else None,
        }


def short_state_root(root: Path, hosts: int) -> Path | None:
    """None when the agents' state dirs are short enough for QMP socket paths, else a short
    folder under /tmp (named after the cluster folder) to hold symlinks to them."""
    longest = root / "hosts" / f"host{hosts}" / "state"
    if len(str(longest)) + GUEST_SOCKET_SUFFIX <= UNIX_PATH_MAX:
        return None
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir() if len(tempfile.gettempdir()) < 20 else "/tmp") / f"ferry-{digest}"


def host_ip(index: int) -> str:
    return str(ipaddress.IPv4Address("127.0.0.0") + HOST_IP_OFFSET + index)


def free_port(ip: str = "127.0.0.1") -> int:
    """A TCP port free on `ip` right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def port_is_free(ip: str, port: int) -> bool:
    """True if a server could listen on ip:port now. SO_REUSEADDR as the servers use it, so
    connections of a previous run still in TIME_WAIT do not count as "in use"."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
            s.listen(1)
        except OSError:
            return False
        return True


def plan(spec: ClusterSpec) -> Plan:
    """Resolves folders and ports; with base_port 0 picks free ports."""
    spec.validate()
    root = Path(spec.dir).expanduser().resolve()
    b = spec.base_port
    if b == 0:
        taken: set[int] = set()

        def pick(ip: str = "127.0.0.1") -> int:
            for _ in range(50):
                p = free_port(ip)
                if p not in taken:
                    taken.add(p)
                    return p
            raise SpecError("no free port found")

        etcd_c, etcd_p, region, sched = pick(), pick(), pick(), pick()
        host_ports = [pick(host_ip(i)) for i in range(1, spec.hosts + 1)]
    else:
        etcd_c, etcd_p, region, sched = b + 30, b + 31, b, b + 10
        host_ports = [b + 20] * spec.hosts
    link_root = short_state_root(root, spec.hosts)
    p = Plan(dir=root, etcd_client_port=etcd_c, etcd_peer_port=etcd_p,
             region_port=region, scheduler_port=sched, link_root=link_root)
    for i in range(1, spec.hosts + 1):
        hroot = root / "hosts" / f"host{i}"
        p.hosts.append(HostSpec(
            index=i, host_id=f"host{i}", name=f"host{i}", ip=host_ip(i), port=host_ports[i - 1],
            accel=spec.accel_of(i), root=hroot, state_dir=hroot / "state",
            local_storage=hroot / "local",
            agent_state_dir=(link_root / f"host{i}") if link_root else hroot / "state"))
    return p


def check_ports_free(p: Plan) -> None:
    """Fails with the first port that something else already holds."""
    wanted = [("etcd client", "127.0.0.1", p.etcd_client_port),
              ("etcd peer", "127.0.0.1", p.etcd_peer_port),
              ("region", "127.0.0.1", p.region_port),
              ("scheduler", "127.0.0.1", p.scheduler_port)]
    wanted += [(h.name, h.ip, h.port) for h in p.hosts]
    for what, ip, port in wanted:
        if not port_is_free(ip, port):
            raise SpecError(f"{what}: {ip}:{port} is already in use (another cluster? try --base-port)")
