"""Assembles the scheduler: host cache + region watcher + reservations + gRPC server.

`start_scheduler(config)` is used by `main`, by the one-machine launcher and
in-process by tests. Shutdown (`Scheduler.stop()`, idempotent) follows the
ServiceServer order: health NOT_SERVING, server.stop(grace), then the hooks:
stop the region watcher (which closes its channel).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ferry_common.server import ServiceServer
from ferry_common.tls import TlsConfig
from ferry_proto.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc

from .cache import HostCache
from .clock import Clock
from .details import DETAIL_BUDGET
from .placement import DEFAULT_TTL_SECONDS, Placer
from .reservations import ReservationBook
from .servicer import SchedulerServicer
from .watcher import RegionWatcher

log = logging.getLogger(__name__)

SERVICE_NAME = scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name


@dataclass(frozen=True)
class SchedulerConfig:
    listen: str = "127.0.0.1:7710"
    region: str = "127.0.0.1:7700"
    tls: TlsConfig | None = None               # server side (--tls-*)
    peer_tls: TlsConfig | None = None          # client side to the region (--peer-tls-*)
    reservation_ttl: float = DEFAULT_TTL_SECONDS   # when a request says 0
    confirmed_grace: float = 120.0             # max time a confirmed reservation stays counted
    reconnect_min: float = 0.2                 # backoff to the region, seconds
    reconnect_max: float = 5.0
    stop_grace: float = 5.0
    detail_budget: int = DETAIL_BUDGET         # bytes of per-host reasons in an error's trailer
    view_wait: float = 5.0                     # a SelectHost before the first snapshot waits this long
    clock: Clock | None = None                 # tests inject a ManualClock


class Scheduler:
    """A running scheduler: `.port`, `.stop()`, and its parts for tests."""

    def __init__(self, server: ServiceServer, cache: HostCache, book: ReservationBook,
                 placer: Placer, watcher: RegionWatcher, config: SchedulerConfig) -> None:
        self.server = server
        self.cache = cache
        self.book = book
        self.placer = placer
        self.watcher = watcher
        self.config = config

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def address(self) -> str:
        host = self.config.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def wait_synced(self, timeout: float = 10.0) -> None:
        """Waits for the first host snapshot from the region (TimeoutError otherwise)."""
        await self.cache.wait_for(lambda c: c.synced and not c.stale, timeout)

    async def wait(self) -> None:
        await self.server.wait()

    async def stop(self, grace: float | None = None) -> None:
        await self.server.stop(self.config.stop_grace if grace is None else grace)


async def start_scheduler(config: SchedulerConfig) -> Scheduler:
    clock = config.clock or Clock()
    cache = HostCache(clock)
    book = ReservationBook(clock, confirmed_grace=config.confirmed_grace)
    cache.add_listener(book)
    placer = Placer(cache, book, clock=clock, default_ttl=config.reservation_ttl)
    server = ServiceServer("ferry-scheduler", config.listen, tls=config.tls,
                           service_names=[SERVICE_NAME])
    server.add(scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server, SchedulerServicer(placer, detail_budget=config.detail_budget,
                                                view_wait=config.view_wait))
    watcher = RegionWatcher(config.region, cache, tls=config.peer_tls,
                            backoff_min=config.reconnect_min, backoff_max=config.reconnect_max)
    server.on_shutdown("stop the region host watcher", watcher.stop)
    try:
        await server.start()
    except BaseException:
        await server.stop(0)
        raise
    watcher.start()
    log.info("scheduler on port %d, host view from region %s", server.port, config.region)
    return Scheduler(server, cache, book, placer, watcher, config)
