"""Host agent configuration: one frozen dataclass, filled from flags or by tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ferry_common.tls import TlsConfig

ACCEL_CHOICES = ("auto", "kvm", "tcg")


@dataclass(frozen=True)
class AgentConfig:
    """Everything a host agent needs to start.

    `listen` may use port 0 (tests): the advertised address then takes the
    bound port. `etcd=None` runs without a health lease and `region=None`
    without registration (unit tests only; a real agent has both).
    """

    host_id: str
    name: str
    state_dir: Path
    local_storage: Path
    listen: str = "127.0.0.11:7720"
    advertise: str | None = None
    #: TCP port of the cold copy's data channel, on the listen address; 0 = any free port
    #: (it is handed to peers with each ExportDisk answer).
    data_port: int = 0
    #: A cold copy whose source sends nothing for this long fails (the network went away).
    copy_stall_timeout: float = 30.0
    region: str | None = "127.0.0.1:7700"
    etcd: str | None = "127.0.0.1:2379"
    shared_storage: Path | None = None
    shared_storage_id: str = "shared0"
    wire: str = "wire0"
    networks: tuple[str, ...] = ("net0",)
    accel: str = "auto"
    lease_ttl: int = 10
    tls: TlsConfig | None = None
    peer_tls: TlsConfig | None = None
    # Used until the region answers with its own refresh_interval_seconds.
    refresh_interval: float = 30.0
    shutdown_grace: float = 5.0

    def __post_init__(self) -> None:
        if self.accel not in ACCEL_CHOICES:
            raise ValueError(f"accel must be one of {', '.join(ACCEL_CHOICES)}, got {self.accel!r}")
        if self.copy_stall_timeout <= 0:
            raise ValueError(f"copy_stall_timeout must be positive, got {self.copy_stall_timeout}")
        if self.lease_ttl < 2:
            raise ValueError(f"lease_ttl must be at least 2 seconds, got {self.lease_ttl}")
        if not self.host_id:
            raise ValueError("host_id must not be empty")
        object.__setattr__(self, "state_dir", Path(self.state_dir))
        object.__setattr__(self, "local_storage", Path(self.local_storage))
        if self.shared_storage is not None:
            object.__setattr__(self, "shared_storage", Path(self.shared_storage))
        object.__setattr__(self, "networks", tuple(self.networks))

    @property
    def local_storage_id(self) -> str:
        return f"{self.host_id}-local"

    def advertised_data(self, bound_port: int) -> str:
        """host:port of the data channel: the advertised host with the data port."""
        host, _, _ = self.advertised(1).rpartition(":")
        return f"{host}:{bound_port}"

    def advertised(self, bound_port: int) -> str:
        """host:port peers use to reach this agent, once the port is known."""
        if self.advertise:
            return self.advertise
        host, _, port = self.listen.rpartition(":")
        if port in ("", "0"):
            port = str(bound_port)
        if host in ("", "0.0.0.0", "[::]"):  # noqa: S104 - not a bind, a display fallback
            host = "127.0.0.1"
        return f"{host}:{port}"
