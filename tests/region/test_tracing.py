"""One trace per client call: client -> region -> scheduler and -> host agent,
propagated in gRPC metadata, checked with an in-memory exporter."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ferry_common.channels import open_channel
from ferry_proto.region.v1 import server_service_pb2_grpc

from .conftest import poll


def _provider() -> TracerProvider:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    return provider


async def test_trace_context_crosses_region_scheduler_and_agent(env):
    exporter = InMemorySpanExporter()
    provider = _provider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("ferry-tests")
    channel = open_channel(f"127.0.0.1:{env.region.port}")
    try:
        stub = server_service_pb2_grpc.ServerServiceStub(channel)
        with tracer.start_as_current_span("climc server-create") as root:
            resp = await stub.CreateServer(env.create_request("traced", auto_start=True))
        trace_id = root.get_span_context().trace_id
        await env.wait_task(resp.task_id)
    finally:
        await channel.close()

    # The scheduler got the caller's trace in its metadata.
    tp = env.fake_scheduler.metadata[-1].get("traceparent", "")
    assert f"{trace_id:032x}" in tp, env.fake_scheduler.metadata[-1]

    def spans_of_trace():
        names = {s.name for s in exporter.get_finished_spans()
                 if s.context.trace_id == trace_id}
        wanted = {"/ferry.region.v1.ServerService/CreateServer",
                  "/ferry.scheduler.v1.SchedulerService/SelectHost",
                  "/ferry.host.v1.HostAgentService/PrepareGuest",
                  "/ferry.host.v1.HostAgentService/StartGuest"}
        return wanted <= names and names
    try:
        await poll(spans_of_trace, 10, what="every hop in one trace")
    finally:
        exporter.shutdown()  # the processor stays on the global provider; stop collecting
