"""Assembles a running region: database, clients, task engine, servicers, etcd watcher.

`start_region(config)` returns a `Region` serving on `region.port`; `stop()`
shuts it down in the fixed order (health NOT_SERVING -> server.stop(grace) ->
drain the task engine -> stop the etcd watcher -> close peer channels ->
dispose the database). Tests and the launcher run it in-process.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from ferry_common.server import ServiceServer
from ferry_proto.region.v1 import (
    host_service_pb2,
    host_service_pb2_grpc,
    image_service_pb2,
    image_service_pb2_grpc,
    migration_service_pb2,
    migration_service_pb2_grpc,
    registry_service_pb2,
    registry_service_pb2_grpc,
    server_service_pb2,
    server_service_pb2_grpc,
    task_service_pb2,
    task_service_pb2_grpc,
)

from .api.host_service import HostRegistryServicer, HostServicer
from .api.image_service import ImageServicer
from .api.migration_service import MigrationParts, MigrationServicer
from .api.server_service import ServerServicer
from .api.task_service import TaskServicer
from .clients.host_agent import AgentClients
from .clients.scheduler import SchedulerClient
from .config import RegionConfig
from .db.engine import Database
from .domain.hosts import HostRegistry
from .domain.images import ImageManager
from .domain.servers import ServerManager
from .domain.tasks import TaskQueries
from .etcd_watcher import HealthWatcher
from .events import Broadcaster
from .hostdown import wire_hostdown
from .tasks import SERVER_TASKS, TaskEngine
from .tasks.deps import TaskDeps

log = logging.getLogger(__name__)

SERVICE_NAMES = [
    server_service_pb2.DESCRIPTOR.services_by_name["ServerService"].full_name,
    host_service_pb2.DESCRIPTOR.services_by_name["HostService"].full_name,
    image_service_pb2.DESCRIPTOR.services_by_name["ImageService"].full_name,
    task_service_pb2.DESCRIPTOR.services_by_name["TaskService"].full_name,
    registry_service_pb2.DESCRIPTOR.services_by_name["HostRegistryService"].full_name,
    migration_service_pb2.DESCRIPTOR.services_by_name["MigrationService"].full_name,
]


@dataclass
class Region:
    config: RegionConfig
    server: ServiceServer
    db: Database
    engine: TaskEngine
    hosts: HostRegistry
    servers: ServerManager
    images: ImageManager
    tasks: TaskQueries
    agents: AgentClients
    scheduler: SchedulerClient
    watcher: HealthWatcher | None
    address: str

    @property
    def port(self) -> int:
        return self.server.port

    async def stop(self, grace: float | None = None) -> None:
        """Ordered, idempotent shutdown."""
        await self.server.stop(self.config.shutdown_grace if grace is None else grace)

    async def wait(self) -> None:
        await self.server.wait()


def _advertised(config: RegionConfig, port: int) -> str:
    if config.advertise:
        return config.advertise
    host, _, _ = config.listen.rpartition(":")
    host = host or "127.0.0.1"
    if host in ("0.0.0.0", "[::]", "::"):
        host = "127.0.0.1"
    return f"{host}:{port}"


async def start_region(config: RegionConfig) -> Region:
    """Migrates the database, starts serving, resumes interrupted tasks."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(config.database_url, workers=config.db_workers)
    try:
        await asyncio.get_running_loop().run_in_executor(None, db.migrate)
    except BaseException:
        await db.close()
        raise
    host_events = Broadcaster("hosts")
    agents = AgentClients(config.peer_tls, timeout=config.timeouts.agent_call)
    scheduler = SchedulerClient(config.scheduler, config.peer_tls,
                                timeout=config.timeouts.scheduler_call)
    server = ServiceServer("ferry-region", config.listen, tls=config.tls,
                           service_names=SERVICE_NAMES)

    deps = TaskDeps(db=db, agents=agents, scheduler=scheduler, host_events=host_events,
                    config=config, region_address="")
    engine = TaskEngine(deps, SERVER_TASKS)
    hosts = HostRegistry(db, host_events, refresh_interval=config.refresh_interval)
    watcher: HealthWatcher | None = None
    if config.etcd:
        watcher = HealthWatcher(config.etcd, set_health=hosts.set_health,
                                sync_health=hosts.sync_health)
        hosts.health = watcher.health_of
    wire_hostdown(config, db, hosts, watcher, server, lambda: deps.region_address)
    images = ImageManager(db, config.images_dir)
    images.prepare()
    servers = ServerManager(db, engine, agents,
                            schedule_wait=config.timeouts.scheduler_call + 5)
    tasks = TaskQueries(db, engine)

    server.add(server_service_pb2_grpc.add_ServerServiceServicer_to_server,
               ServerServicer(servers))
    server.add(host_service_pb2_grpc.add_HostServiceServicer_to_server, HostServicer(hosts))
    server.add(registry_service_pb2_grpc.add_HostRegistryServiceServicer_to_server,
               HostRegistryServicer(hosts))
    server.add(image_service_pb2_grpc.add_ImageServiceServicer_to_server, ImageServicer(images))
    server.add(task_service_pb2_grpc.add_TaskServiceServicer_to_server, TaskServicer(tasks))
    server.add(migration_service_pb2_grpc.add_MigrationServiceServicer_to_server,
               MigrationServicer(MigrationParts(servers=servers, engine=engine, deps=deps)))

    async def stop_watcher() -> None:
        if watcher is not None:
            await watcher.stop()

    async def close_peers() -> None:
        await agents.close()
        await scheduler.close()

    server.on_shutdown("drain task engine", engine.drain)
    server.on_shutdown("stop etcd watcher", stop_watcher)
    server.on_shutdown("close peer channels", close_peers)
    server.on_shutdown("dispose database", db.close)

    await hosts.mark_unregistered()
    try:
        port = await server.start()
    except BaseException:
        await close_peers()
        await db.close()
        raise
    address = _advertised(config, port)
    deps.region_address = address
    if watcher is not None:
        watcher.start()
    try:
        resumed = await engine.start(resume=config.resume_tasks)
    except BaseException:
        await server.stop(0)
        raise
    if resumed:
        log.info("resumed %d task(s)", len(resumed))
    log.info("region serving on %s (advertised %s, db %s)", config.listen, address, db.dialect)
    return Region(config=config, server=server, db=db, engine=engine, hosts=hosts,
                  servers=servers, images=images, tasks=tasks, agents=agents,
                  scheduler=scheduler, watcher=watcher, address=address)
