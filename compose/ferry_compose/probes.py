"""Readiness probes: etcd's /health, the standard gRPC health check, the region's host list.

Every probe is one bounded attempt that returns (ok, detail); the caller polls
with a deadline. Loopback only, and never through an HTTP proxy.
"""

from __future__ import annotations

import json
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def etcd_healthy(client_port: int, timeout: float = 1.0) -> tuple[bool, str]:
    try:
        with _NO_PROXY.open(f"http://127.0.0.1:{client_port}/health", timeout=timeout) as r:
            body = json.loads(r.read() or b"{}")
    except (OSError, ValueError) as e:
        return False, str(e)
    return str(body.get("health")) == "true", json.dumps(body)


def grpc_serving(address: str, service: str = "", timeout: float = 1.0) -> tuple[bool, str]:
    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as ch:
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as e:
            return False, f"{e.code().name}: {e.details()}"
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    return resp.status == health_pb2.HealthCheckResponse.SERVING, name


def region_hosts(address: str, timeout: float = 2.0) -> list:
    """The region's hosts (ferry.region.v1.Host messages); raises grpc.RpcError."""
    from ferry_proto.region.v1 import host_service_pb2, host_service_pb2_grpc

    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as ch:
        resp = host_service_pb2_grpc.HostServiceStub(ch).ListHosts(
            host_service_pb2.ListHostsRequest(), timeout=timeout)
    return list(resp.hosts)


def hosts_online(address: str, host_ids: list[str]) -> tuple[bool, str]:
    """True when every host id is listed by the region and online in etcd."""
    from ferry_proto.region.v1 import resources_pb2

    try:
        hosts = region_hosts(address)
    except grpc.RpcError as e:
        return False, f"ListHosts: {e.code().name}: {e.details()}"
    online = {h.id for h in hosts if h.host_status == resources_pb2.HOST_HEALTH_ONLINE}
    missing = [h for h in host_ids if h not in online]
    if missing:
        seen = ", ".join(f"{h.id}={resources_pb2.HostHealth.Name(h.host_status)}" for h in hosts) or "none"
        return False, f"not online yet: {', '.join(missing)} (region lists: {seen})"
    return True, f"{len(host_ids)} hosts online"
