"""`FerryClient`: a synchronous Python SDK over the region's generated gRPC stubs.

    from ferry_client import FerryClient
    with FerryClient("127.0.0.1:7700") as fc:
        resp = fc.servers.create("vm1", image="cirros", memory_mb=512, auto_start=True)
        fc.wait_task(resp.task_id, timeout=120)
        for s in fc.servers.iter(scope="system", details=True):
            print(s.name, s.host_name)

Resource groups are attributes: `servers`, `hosts`, `images`, `tasks`. The raw
stubs are there too (`server_stub`, `host_stub`, `image_stub`, `task_stub`) for
anything the helpers do not cover. Every failed call raises a `ClientError`
subclass with the `grpc.RpcError` as `__cause__`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator
from typing import Any, TypeVar

import grpc
from ferry_common.tls import TlsConfig

from ferry_proto.region.v1 import (
    host_service_pb2_grpc,
    image_service_pb2_grpc,
    resources_pb2,
    server_service_pb2_grpc,
    migration_service_pb2_grpc,
    task_service_pb2_grpc,
)

from .errors import ClientError, Unimplemented, Unavailable, TaskFailed, WaitTimeout, translate
from .hosts import HostsAPI
from .images import ImagesAPI
from .migrations import MigrationsAPI
from .servers import ServersAPI
from .tasks import TERMINAL_STATES, TasksAPI

DEFAULT_ADDRESS = "127.0.0.1:7700"
ENV_ADDRESS = "FERRY_REGION"
DEFAULT_TIMEOUT = 30.0
MAX_MESSAGE = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
]

T = TypeVar("T")

_UNSET: Any = ...  # "use the client default"; None means no deadline


def resolve_address(address: str | None = None) -> str:
    """The region address: the argument, else $FERRY_REGION, else 127.0.0.1:7700."""
    return address or os.environ.get(ENV_ADDRESS) or DEFAULT_ADDRESS


def _credentials(tls: TlsConfig | grpc.ChannelCredentials | bool | None) -> grpc.ChannelCredentials | None:
    if tls is None or tls is False:
        return None
    if tls is True:
        return grpc.ssl_channel_credentials()
    if isinstance(tls, TlsConfig):
        return tls.channel_credentials() if tls.enabled else None
    return tls


class FerryClient:
    """A connection to the region's public API.

    `address`: host:port (default: $FERRY_REGION, else 127.0.0.1:7700).
    `tls`: None for plain text, a `ferry_common.tls.TlsConfig` (CA, optional
    client cert+key for mTLS), ready `grpc.ChannelCredentials`, or True for the
    system roots. `timeout`: default deadline in seconds of every unary call
    (None: no deadline); streams have no deadline unless one is passed.
    """

    def __init__(self, address: str | None = None,
                 tls: TlsConfig | grpc.ChannelCredentials | bool | None = None, *,
                 timeout: float | None = DEFAULT_TIMEOUT,
                 options: list[tuple[str, Any]] | None = None) -> None:
        self.address = resolve_address(address)
        self.timeout = timeout
        creds = _credentials(tls)
        opts = list(CHANNEL_OPTIONS) + list(options or [])
        self.channel: grpc.Channel = (grpc.secure_channel(self.address, creds, options=opts)
                                      if creds is not None
                                      else grpc.insecure_channel(self.address, options=opts))
        self.server_stub = server_service_pb2_grpc.ServerServiceStub(self.channel)
        self.host_stub = host_service_pb2_grpc.HostServiceStub(self.channel)
        self.image_stub = image_service_pb2_grpc.ImageServiceStub(self.channel)
        self.task_stub = task_service_pb2_grpc.TaskServiceStub(self.channel)
        self.migration_stub = migration_service_pb2_grpc.MigrationServiceStub(self.channel)
        self.servers = ServersAPI(self)
        self.migrations = MigrationsAPI(self)
        self.hosts = HostsAPI(self)
        self.images = ImagesAPI(self)
        self.tasks = TasksAPI(self)

    # -- life cycle ---------------------------------------------------------

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> FerryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FerryClient({self.address!r})"

    # -- call helpers (used by the resource groups) -------------------------

    def _deadline(self, timeout: Any) -> float | None:
        return self.timeout if timeout is _UNSET else timeout

    def call(self, method: Callable[..., T], request: Any, timeout: Any = _UNSET) -> T:
        """Run a unary (or client-streaming) stub method; failures become `ClientError`."""
        try:
            return method(request, timeout=self._deadline(timeout))
        except grpc.RpcError as exc:
            raise translate(exc, self.address) from exc

    def stream(self, method: Callable[..., Any], request: Any,
               timeout: float | None = None) -> Generator[Any, None, None]:
        """Iterate a server-streaming stub method; the call is cancelled when the iterator is closed."""
        try:
            call = method(request, timeout=timeout)
        except grpc.RpcError as exc:  # pragma: no cover - stream calls fail on iteration
            raise translate(exc, self.address) from exc
        try:
            for message in call:
                yield message
        except grpc.RpcError as exc:
            raise translate(exc, self.address) from exc
        finally:
            call.cancel()

    # -- tasks --------------------------------------------------------------

    def wait_task(self, task_id: str, timeout: float | None = None, *,
                  on_update: Callable[[resources_pb2.Task], None] | None = None,
                  poll_interval: float = 0.5,
                  unavailable_grace: float = 30.0) -> resources_pb2.Task:
        """Block until the task ends; return it when it succeeded.

        Follows `TaskService.WatchTask`; if the region does not implement it, or
        the stream breaks (a region restart: the task engine resumes its tasks),
        it polls `GetTask` every `poll_interval` seconds, riding out up to
        `unavailable_grace` seconds of an unreachable region.
        `on_update(task)` is called on every change. Raises `TaskFailed` when the
        task failed and `WaitTimeout` (DEADLINE_EXCEEDED) after `timeout` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        last: list[resources_pb2.Task | None] = [None]

        def remaining() -> float | None:
            if deadline is None:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._wait_timeout(task_id, timeout, last[0])
            return left

        def seen(task: resources_pb2.Task) -> resources_pb2.Task | None:
            prev = last[0]
            changed = prev is None or (prev.state, prev.stage, list(prev.history)) != \
                (task.state, task.stage, list(task.history))
            last[0] = task
            if changed and on_update is not None:
                on_update(task)
            if task.state in TERMINAL_STATES:
                if task.state == resources_pb2.TASK_STATE_FAILED:
                    raise TaskFailed(task)
                return task
            return None

        # 1. Follow the watch stream.
        try:
            for task in self.tasks.watch(task_id, timeout=remaining()):
                done = seen(task)
                if done is not None:
                    return done
        except (Unimplemented, Unavailable):
            pass  # fall back to polling below
        except ClientError as exc:
            if exc.code == grpc.StatusCode.DEADLINE_EXCEEDED and deadline is not None \
                    and not isinstance(exc, WaitTimeout):
                raise self._wait_timeout(task_id, timeout, last[0]) from exc
            raise
        # 2. Poll GetTask.
        unavailable_since: float | None = None
        while True:
            left = remaining()
            try:
                task = self.tasks.get(task_id, timeout=min(self.timeout or 30.0, left or 30.0))
            except Unavailable:
                now = time.monotonic()
                unavailable_since = unavailable_since or now
                if now - unavailable_since > unavailable_grace:
                    raise
            else:
                unavailable_since = None
                done = seen(task)
                if done is not None:
                    return done
            left = remaining()
            time.sleep(poll_interval if left is None else min(poll_interval, left))

    @staticmethod
    def _wait_timeout(task_id: str, timeout: float | None,
                      task: resources_pb2.Task | None) -> WaitTimeout:
        where = f" (still at stage {task.stage})" if task is not None and task.stage else ""
        return WaitTimeout(f"task {task_id} did not end within {timeout:g} s{where}", task=task)
