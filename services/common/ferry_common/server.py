"""A gRPC aio server with health, reflection, tracing, error mapping and TLS.

Shutdown follows one fixed order and is idempotent:
health NOT_SERVING -> server.stop(grace) -> the service's own hooks in the
order they were added (drain the task engine, revoke the etcd lease, dispose
the database engine...).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .channels import MAX_MESSAGE
from .interceptors import ErrorMappingInterceptor
from .telemetry import server_interceptors
from .tls import TlsConfig

log = logging.getLogger(__name__)

AddFn = Callable[[object, grpc.aio.Server], None]
Hook = Callable[[], Awaitable[None]]


class ServiceServer:
    """Owns one grpc.aio.Server and the service's ordered shutdown."""

    def __init__(self, name: str, bind: str, *, tls: TlsConfig | None = None,
                 service_names: Sequence[str] = ()) -> None:
        self.name = name
        self.bind = bind
        self.tls = tls
        self.service_names = list(service_names)
        self._server = grpc.aio.server(
            interceptors=[*server_interceptors(), ErrorMappingInterceptor()],
            options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                     ("grpc.max_send_message_length", MAX_MESSAGE),
                     ("grpc.so_reuseport", 0),
                     ("grpc.keepalive_permit_without_calls", 1),
                     ("grpc.http2.min_ping_interval_without_data_ms", 5_000)])
        self._health = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        self._hooks: list[tuple[str, Hook]] = []
        self._stopped = False
        self._stop_lock = asyncio.Lock()
        self.port = 0

    def add(self, add_fn: AddFn, servicer: object) -> None:
        add_fn(servicer, self._server)

    async def set_service_health(self, service: str, status: int) -> None:
        """Sets the gRPC health status of one extra service name (e.g. a readiness signal)."""
        result = self._health.set(service, status)
        if asyncio.iscoroutine(result):
            await result

    def on_shutdown(self, label: str, hook: Hook) -> None:
        """Registers a shutdown step; steps run in registration order."""
        self._hooks.append((label, hook))

    async def start(self) -> int:
        names = [*self.service_names, health.SERVICE_NAME, reflection.SERVICE_NAME]
        reflection.enable_server_reflection(names, self._server)
        if self.tls is not None and self.tls.enabled:
            self.port = self._server.add_secure_port(self.bind, self.tls.server_credentials())
        else:
            self.port = self._server.add_insecure_port(self.bind)
        if self.port == 0:
            raise OSError(f"{self.name}: cannot bind {self.bind}")
        await self._server.start()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("%s listening on %s (port %d)", self.name, self.bind, self.port)
        return self.port

    async def _set_health(self, status: int) -> None:
        for svc in ["", *self.service_names]:
            result = self._health.set(svc, status)
            if asyncio.iscoroutine(result):
                await result

    async def wait(self) -> None:
        await self._server.wait_for_termination()

    async def stop(self, grace: float = 5.0) -> None:
        async with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
            await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
            await self._server.stop(grace)
            for label, hook in self._hooks:
                try:
                    await hook()
                except Exception:  # noqa: BLE001 - keep shutting down, but say so
                    log.exception("%s: shutdown step %r failed", self.name, label)
            log.info("%s stopped", self.name)


def run_until_signal(start: Callable[[], Awaitable[ServiceServer]]) -> None:
    """Runs a service until SIGINT/SIGTERM, then its ordered shutdown."""
    import signal

    async def main() -> None:
        server = await start()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        waiter = asyncio.create_task(server.wait())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        await server.stop()
        for t in (waiter, stopper):
            t.cancel()

    asyncio.run(main())


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
