"""Client channels to other Ferry services: tracing, TLS and sane limits."""

from __future__ import annotations

import grpc

from .telemetry import client_interceptors
from .tls import TlsConfig

MAX_MESSAGE = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


def open_channel(address: str, tls: TlsConfig | None = None) -> grpc.aio.Channel:
    """An aio channel to `address` (host:port) that propagates the trace context."""
    interceptors = client_interceptors()
    if tls is not None and tls.enabled:
        return grpc.aio.secure_channel(address, tls.channel_credentials(),
                                       options=CHANNEL_OPTIONS, interceptors=interceptors)
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS, interceptors=interceptors)
