"""OpenTelemetry set-up shared by the services.

Tracing is always on (so context propagates region -> scheduler -> host through
gRPC metadata); where spans go is chosen by the standard variables:
OTEL_TRACES_EXPORTER = none (default) | console | otlp, OTEL_SERVICE_NAME.
Tests install their own provider with an in-memory exporter before calling
`server_interceptors()` / `client_interceptors()`.
"""

from __future__ import annotations

import logging
import os

from opentelemetry import trace
from opentelemetry.instrumentation.grpc import (
    aio_client_interceptors,
    aio_server_interceptor,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

log = logging.getLogger(__name__)
_configured = False


def setup_tracing(service_name: str) -> None:
    """Install a global tracer provider once, exporter from OTEL_TRACES_EXPORTER."""
    global _configured
    if _configured or not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        _configured = True
        return
    name = os.environ.get("OTEL_SERVICE_NAME", service_name)
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "none").strip().lower()
    if exporter_name == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif exporter_name == "otlp":
        try:  # optional dependency: opentelemetry-exporter-otlp
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError:
            log.warning("OTEL_TRACES_EXPORTER=otlp but opentelemetry-exporter-otlp is not installed")
        else:
            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif exporter_name not in ("none", ""):
        log.warning("unknown OTEL_TRACES_EXPORTER=%s, spans are not exported", exporter_name)
    trace.set_tracer_provider(provider)
    _configured = True


def server_interceptors() -> list:
    """Interceptors that open a server span per call, continuing the caller's trace."""
    return [aio_server_interceptor()]


def client_interceptors() -> list:
    """Interceptors that open a client span and inject the trace context."""
    return list(aio_client_interceptors())
