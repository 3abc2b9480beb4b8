"""Assembles a host agent: storages, driver, guests, gRPC server, etcd lease, registration.

`start_agent()` is used in-process by tests and by the launcher's
`ferry-host` processes alike. Start-up adopts the guests still running from
an earlier agent process. Shutdown (`Agent.stop()`, idempotent) runs in a
fixed order: health NOT_SERVING, server.stop(grace), stop registering,
revoke the etcd lease, drop the QMP links. It never stops a guest: guests
outlive an agent restart.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import cast

from ferry_common.server import ServiceServer
from ferry_proto.host.v1 import agent_pb2, agent_pb2_grpc, migration_pb2, migration_pb2_grpc

from . import convert, facts
from .config import AgentConfig
from .driver.kvm import AccelSetting, probe_accelerator, probe_kvm
from .driver.qmp import QmpDriver
from .guests import Guests
from .health.fence import fenced_guests
from .imagecache import ImageCache
from .lease import HealthLease, health_value
from .migration.exporter import DataServer, Exports
from .migration.leftovers import Leftovers
from .migration.reconcile import start_reconciler
from .migration_servicer import MigrationAgentServicer
from .registration import Registrar
from .servicer import HostAgentServicer
from .storage import Storage, StorageKind, Storages

log = logging.getLogger(__name__)

SERVICE_NAME = agent_pb2.DESCRIPTOR.services_by_name["HostAgentService"].full_name
MIGRATION_SERVICE_NAME = migration_pb2.DESCRIPTOR.services_by_name["MigrationAgentService"].full_name


@dataclass
class Agent:
    config: AgentConfig
    accelerator: str
    storages: Storages
    driver: QmpDriver
    guests: Guests
    server: ServiceServer
    adopted: list[str] = field(default_factory=list)
    address: str = ""
    exports: Exports = field(default_factory=Exports)
    data_address: str = ""
    lease: HealthLease | None = None
    registrar: Registrar | None = None

    @property
    def port(self) -> int:
        return self.server.port

    def facts(self) -> facts.HostFacts:
        return facts.collect(host_id=self.config.host_id, name=self.config.name,
                             access_address=self.address, accelerator=self.accelerator,
                             storages=self.storages, wire=self.config.wire,
                             networks=self.config.networks)

    async def register_request(self):
        views = await self.guests.views()
        return convert.register_request(await asyncio.to_thread(self.facts), views)

    async def stop(self) -> None:
        """Ordered, idempotent shutdown; guests keep running."""
        await self.server.stop(self.config.shutdown_grace)

    async def wait(self) -> None:
        await self.server.wait()


def _storages(config: AgentConfig) -> Storages:
    items = [Storage(config.local_storage_id, "local", StorageKind.LOCAL,
                     config.local_storage.absolute())]
    if config.shared_storage is not None:
        items.append(Storage(config.shared_storage_id, config.shared_storage_id,
                             StorageKind.SHARED, config.shared_storage.absolute()))
    return Storages(items)


async def _accelerator(setting: str) -> tuple[str, str]:
    """("kvm"|"tcg", the -cpu model KVM guests use)."""
    accel = await asyncio.to_thread(probe_accelerator, cast(AccelSetting, setting))
    cpu = "host"
    if accel == "kvm":
        probe = await asyncio.to_thread(probe_kvm)
        cpu = probe.cpu_model or cpu
    return accel, cpu


async def start_agent(config: AgentConfig) -> Agent:
    config.state_dir.mkdir(parents=True, exist_ok=True)
    accelerator, kvm_cpu = await _accelerator(config.accel)
    storages = _storages(config)
    driver = QmpDriver(config.state_dir, kvm_cpu_model=kvm_cpu)
    guests = Guests(config.state_dir, storages, ImageCache(peer_tls=config.peer_tls), driver,
                    accelerator=accelerator, networks=config.networks,
                    default_region=config.region)
    server = ServiceServer("ferry-host", config.listen, tls=config.tls,
                           service_names=[SERVICE_NAME, MIGRATION_SERVICE_NAME])
    agent = Agent(config, accelerator, storages, driver, guests, server)
    try:
        agent.adopted = await guests.load()
        server.add(agent_pb2_grpc.add_HostAgentServiceServicer_to_server,
                   HostAgentServicer(guests, agent.facts))
        server.add(migration_pb2_grpc.add_MigrationAgentServiceServicer_to_server,
                   MigrationAgentServicer(agent))
        port = await server.start()
    except BaseException:
        await driver.detach_all()
        raise
    agent.address = config.advertised(port)
    data_host = config.listen.rpartition(":")[0].strip("[]") or "0.0.0.0"  # noqa: S104
    data = DataServer(data_host, config.data_port, agent.exports, config.state_dir,
                      tls=config.tls.server_ssl_context() if config.tls and config.tls.enabled
                      else None)
    try:
        agent.data_address = config.advertised_data(data.start())
    except OSError:
        await server.stop(0)
        await driver.detach_all()
        raise
    server.on_shutdown("close the data channel", data.stop)
    if config.region:
        agent.registrar = Registrar(config.region, agent.register_request,
                                    peer_tls=config.peer_tls,
                                    default_interval=config.refresh_interval)
        agent.registrar.on_foreign = Leftovers(guests).schedule
        server.on_shutdown("stop registration", agent.registrar.stop)
        agent.registrar.start()
    if config.etcd:
        agent.lease = HealthLease(config.etcd, config.host_id, config.lease_ttl,
                                  health_value(config.host_id, lambda: agent.address))
        server.on_shutdown("revoke etcd lease", agent.lease.close)
        agent.lease.start()
    server.on_shutdown("stop migration reconciler", start_reconciler(agent))
    server.on_shutdown("detach QMP links", driver.detach_all)
    fenced = fenced_guests(config.state_dir)
    if fenced:
        # The health keeper stopped these when the host lost its lease; the agent never
        # starts a guest by itself: they stay stopped until the region decides.
        log.warning("fenced guests left stopped (the region decides where they run): %s",
                    ", ".join(fenced))
    log.info("host agent %s (%s) at %s, data channel %s: accelerator %s, %d storages, "
             "%d guests adopted", config.host_id, config.name, agent.address, agent.data_address,
             accelerator,
             len(list(storages)), len(agent.adopted))
    return agent
