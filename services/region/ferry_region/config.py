"""Region configuration (what `ferry-region` flags fill in)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ferry_common.tls import TlsConfig


@dataclass(frozen=True)
class Timeouts:
    """Deadlines, in seconds, of calls to peers and of task stages."""

    #: Default deadline of a host agent call.
    agent_call: float = 15.0
    #: PrepareGuest may download an image and create disks.
    prepare_guest: float = 300.0
    #: StartGuest boots QEMU and waits for QMP.
    start_guest: float = 60.0
    #: Seconds a guest gets to quit cleanly before the agent kills it.
    stop_guest: int = 10
    #: Scheduler calls.
    scheduler_call: float = 10.0
    #: Upper bound of any single stage, whatever it calls.
    stage: float = 600.0
    #: Time the engine waits for running stages at shutdown before cancelling them.
    drain: float = 5.0
    #: Reservation lifetime asked of the scheduler.
    reservation_ttl: int = 60
    #: PrepareIncoming: disks, image download, QEMU -incoming, NBD exports.
    prepare_incoming: float = 300.0
    #: Upper bound of a live migration's memory+mirror stage (the agent's own
    #: completion and stall deadlines normally end it much sooner).
    live_migrate: float = 3600.0


@dataclass(frozen=True)
class HostDownConfig:
    """Host-down detection and automatic rescue (issue 6; see `ferry_region.hostdown`)."""

    #: Act on host-down at all (the health status is kept either way).
    enabled: bool = True
    #: Seconds after a host's health key vanished in which it may come back.
    window: float = 10.0
    #: Deadline of the gRPC health check that confirms the agent does not answer.
    probe_timeout: float = 2.0
    #: If more than this share of the hosts expire within `mass_period`, auto-rescue pauses.
    max_expired_share: float = 0.5
    #: Seconds over which expiries count as "at once".
    mass_period: float = 60.0
    #: Rescues in flight at once, over all down hosts.
    max_in_flight: int = 4
    #: Deadline of one rescue (MigrateServer until the task ends).
    rescue_timeout: float = 300.0
    #: TTL of the etcd lease behind the leader key (one replica acts on host-down).
    leader_ttl: int = 6
    #: Seconds after the etcd watch (re)synced before an incident may be confirmed: keepers
    #: that held off fencing while this region did not see etcd fence within about 1 s.
    resync_grace: float = 3.0


@dataclass(frozen=True)
class RegionConfig:
    #: host:port to listen on; port 0 picks a free port.
    listen: str = "127.0.0.1:7700"
    #: Folder for the SQLite database and the image store.
    data_dir: Path = Path("./var/region")
    #: SQLAlchemy URL; None means sqlite:///<data_dir>/region.db.
    db_url: str | None = None
    #: Scheduler address.
    scheduler: str = "127.0.0.1:7710"
    #: etcd endpoint host:port; empty disables the health watcher.
    etcd: str = "127.0.0.1:2379"
    #: Address host agents and the scheduler use to reach the region; None = listen
    #: (with the real port when listen asked for port 0).
    advertise: str | None = None
    log_level: str = "INFO"
    #: Server-side TLS of the region's endpoint.
    tls: TlsConfig | None = None
    #: Client-side TLS towards the scheduler and host agents.
    peer_tls: TlsConfig | None = None
    #: Seconds between agent registrations (sent to agents).
    refresh_interval: int = 30
    #: Resume RUNNING/ROLLING_BACK tasks at start (tests may turn it off).
    resume_tasks: bool = True
    timeouts: Timeouts = field(default_factory=Timeouts)
    #: Hard cap of the downtime limit that --quickly-finish may raise to (ms).
    live_downtime_cap_ms: int = 1000
    #: A live migration without progress for this long is aborted (s).
    live_stall_timeout_s: int = 60
    #: Host-down detection and automatic rescue.
    hostdown: HostDownConfig = field(default_factory=HostDownConfig)
    #: Grace period of server.stop at shutdown.
    shutdown_grace: float = 3.0
    #: DB worker threads (and connection pool size).
    db_workers: int = 8

    @property
    def database_url(self) -> str:
        if self.db_url:
            return self.db_url
        return f"sqlite:///{(self.data_dir / 'region.db').resolve()}"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"
