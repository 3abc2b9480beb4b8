"""`climc server-migrate-forecast` and the SDK's `migrations.forecast` against a small
MigrationService on 127.0.0.1 (real gRPC): the request it builds, table and JSON output."""

from __future__ import annotations

import json
from concurrent import futures

import grpc
import pytest
from ferry_client import FerryClient
from ferry_client.climc.main import main
from ferry_proto.region.v1 import migration_service_pb2 as mpb
from ferry_proto.region.v1 import migration_service_pb2_grpc


class FakeMigrations(migration_service_pb2_grpc.MigrationServiceServicer):
    def __init__(self) -> None:
        self.requests: list[mpb.ForecastMigrationRequest] = []

    def ForecastMigration(self, request, context):
        self.requests.append(request)
        if request.id == "ghost":
            context.abort(grpc.StatusCode.NOT_FOUND, "server 'ghost' not found")
        cands = [] if request.id == "stuck" else [
            mpb.HostCandidate(host_id="h2", host_name="beta", score=87.5),
            mpb.HostCandidate(host_id="h3", host_name="gamma", score=61.25)]
        return mpb.ForecastMigrationResponse(can_place=bool(cands), candidates=cands, rejected=[
            mpb.HostRejection(host_id="h1", host_name="alpha", rejections=[
                mpb.FilterRejection(filter="source_host", reason="SOURCE_HOST",
                                    message="host is the server's current host")]),
            mpb.HostRejection(host_id="h4", host_name="delta", rejections=[
                mpb.FilterRejection(filter="cpu_model", reason="CPU_MODEL_MISMATCH",
                                    message="CPU model 'AMD' differs from the source's 'Intel'"),
                mpb.FilterRejection(filter="kernel", reason="KERNEL_MISMATCH",
                                    message="kernel '6.5' differs from the source's '6.1'")])])


@pytest.fixture(scope="module")
def served():
    fake = FakeMigrations()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    migration_service_pb2_grpc.add_MigrationServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield fake, f"127.0.0.1:{port}"
    server.stop(0)


def run(address, capsys, *argv):
    capsys.readouterr()
    rc = main(["--region", address, *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_table_lists_candidates_and_every_rejection(served, capsys):
    fake, address = served
    rc, out, err = run(address, capsys, "server-migrate-forecast", "--live", "--skip-kernel-check",
                       "--prefer-host", "beta", "vm1")
    assert rc == 0 and err == ""
    req = fake.requests[-1]
    assert (req.id, req.live, req.rescue_mode, req.prefer_host, req.skip_cpu_check,
            req.skip_kernel_check) == ("vm1", True, False, "beta", False, True)
    lines = out.splitlines()
    assert lines[0] == "Server vm1 can be placed (live migration): 2 candidate host(s), 2 rejected"
    assert "| Rank | Host_id | Name  | Score |" in out
    assert "| 1    | h2      | beta  | 87.50 |" in out
    assert "| 2    | h3      | gamma | 61.25 |" in out
    assert "Rejected hosts:" in out
    row = next(x for x in lines if "CPU_MODEL_MISMATCH" in x)
    assert "| h4 " in row and "| delta " in row and "| cpu_model " in row
    assert "CPU model 'AMD' differs from the source's 'Intel'" in row
    kernel_row = next(x for x in lines if "KERNEL_MISMATCH" in x)
    assert kernel_row.startswith("|         |       | kernel ")      # same host: blank id, name
    assert "SOURCE_HOST" in out and "host is the server's current host" in out


def test_cannot_place_and_rescue_flags(served, capsys):
    fake, address = served
    rc, out, _ = run(address, capsys, "server-migrate-forecast", "--rescue-mode", "stuck")
    assert rc == 0
    assert out.splitlines()[0] == "Server stuck cannot be placed (rescue): 0 candidate host(s), 2 rejected"
    assert "Rank" not in out
    assert fake.requests[-1].rescue_mode and not fake.requests[-1].live


def test_json_is_one_document(served, capsys):
    _, address = served
    rc, out, _ = run(address, capsys, "--output", "json", "server-migrate-forecast", "vm1")
    assert rc == 0
    doc = json.loads(out)
    assert doc["can_place"] is True
    assert [c["host_name"] for c in doc["candidates"]] == ["beta", "gamma"]
    assert doc["candidates"][0]["score"] == 87.5
    assert doc["rejected"][1]["rejections"][1] == {
        "filter": "kernel", "reason": "KERNEL_MISMATCH",
        "message": "kernel '6.5' differs from the source's '6.1'"}


def test_errors_and_usage(served, capsys):
    _, address = served
    rc, _, err = run(address, capsys, "server-migrate-forecast", "ghost")
    assert rc == 1 and err.startswith("climc: error: NOT_FOUND: server 'ghost' not found")
    rc, _, err = run(address, capsys, "server-migrate-forecast")
    assert rc == 2 and "ID" in err


def test_sdk_forecast(served):
    fake, address = served
    with FerryClient(address, timeout=5) as c:
        resp = c.migrations.forecast("vm1", rescue_mode=True, skip_cpu_check=False)
    assert resp.can_place and resp.candidates[0].host_id == "h2"
    assert fake.requests[-1].rescue_mode
