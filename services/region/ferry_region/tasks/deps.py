"""The region parts a task step may use."""

from __future__ import annotations

from dataclasses import dataclass

from ..clients.host_agent import AgentClients
from ..clients.scheduler import SchedulerClient
from ..config import RegionConfig
from ..db.engine import Database
from ..events import Broadcaster


@dataclass
class TaskDeps:
    db: Database
    agents: AgentClients
    scheduler: SchedulerClient
    #: Host ids whose facts or usage changed (feeds HostService.WatchHosts).
    host_events: Broadcaster
    config: RegionConfig
    #: host:port agents download images from (PrepareGuestRequest.region_address).
    region_address: str
