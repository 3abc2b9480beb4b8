#!/usr/bin/env python3
"""Region API benchmark: GetServer and ListServers with 10,000 servers and 1,000 hosts.

    .venv/bin/python bench/region_api.py [--servers 10000] [--hosts 1000] [--seconds 3]

1. Builds the region's SQLite inventory directly through its DB layer (Alembic
   migrations, then bulk INSERTs): hosts with storages and networks, one image,
   servers with a disk and a NIC each, spread over the hosts.
2. Starts a real cluster on that database with the launcher (etcd, region,
   scheduler, one host agent; free ports on 127.0.0.1).
3. Starts a bare grpc.aio echo service in its own process (the same process model
   as the region: one asyncio Python process) that answers each method with a real
   region response captured just before: same request, same bytes, same decoding
   in the client; only the server's work differs.
4. From this one client process, for each workload: latency (sequential calls,
   p50/p99) and throughput (grpc.aio, several calls in flight), then prints the
   figures and the ratios to the echo baseline measured in the same run.

Goals: ListServers (page of 100) p99 < 20 ms; GetServer >= 1/3 of echo throughput.
Bounded: every phase has a time limit and the whole run stops itself after 170 s.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc

GLOBAL_LIMIT_S = 170
ECHO_SERVICE = "ferry.bench.v1.Echo"
CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]


# ---- the inventory --------------------------------------------------------------------------

def build_inventory(db_path: Path, n_hosts: int, n_servers: int) -> list[str]:
    """Creates the region database with `n_hosts` hosts and `n_servers` servers; returns server ids."""
    from sqlalchemy import insert

    from ferry_region.db import models as m
    from ferry_region.db.engine import make_engine
    from ferry_region.db.migrate import upgrade_head
    from ferry_region.states import (
        Accelerator,
        DiskFormat,
        HostHealth,
        HostStatus,
        ImageStatus,
        ServerStatus,
        StorageKind,
    )

    engine = make_engine(f"sqlite:///{db_path}")
    upgrade_head(engine)
    now = dt.datetime.now(dt.UTC)
    rng = random.Random(42)
    hosts, storages, host_storages, host_nets = [], [], [], []
    for i in range(n_hosts):
        hid = f"bench-host-{i:04d}"
        hosts.append(dict(
            id=hid, name=hid, access_address="127.0.0.1:1", status=HostStatus.READY,
            host_status=HostHealth.OFFLINE, enabled=True, hypervisor="kvm",
            cpu_model="Intel(R) Xeon(R) Bench CPU @ 2.00GHz", cpu_microcode="0x2007006",
            kernel_version="6.1.0-bench", accelerator=Accelerator.KVM, cpu_count=64,
            cpu_cmtbound=8.0, mem_size_mb=512 * 1024, mem_cmtbound=1.0, mem_reserved_mb=4096,
            wire="wire0", auto_migrate_on_host_down=False, auto_migrate_on_host_shutdown=False,
            agent_version="bench", registered_at=now, created_at=now, updated_at=now))
        storages.append(dict(id=f"{hid}-local", name=f"{hid}-local", kind=StorageKind.LOCAL,
                             capacity_mb=4 * 1024 * 1024, free_mb=2 * 1024 * 1024, updated_at=now))
        host_storages.append(dict(host_id=hid, storage_id=f"{hid}-local", path=f"/var/lib/ferry/{hid}"))
        host_nets.append(dict(host_id=hid, network="net0"))
    image_id = str(uuid.uuid4())
    servers, disks, nics, ids = [], [], [], []
    for i in range(n_servers):
        sid = str(uuid.uuid4())
        host = hosts[i % n_hosts]["id"]
        ids.append(sid)
        servers.append(dict(
            id=sid, name=f"bench-vm-{i:05d}", project="default",
            status=rng.choice([ServerStatus.READY, ServerStatus.RUNNING]), status_reason="",
            host_id=host, vcpu_count=rng.choice([1, 2, 4]), memory_mb=rng.choice([512, 1024, 2048]),
            image_id=image_id, task_id=None, progress=None, created_at=now, updated_at=now))
        disks.append(dict(id=str(uuid.uuid4()), server_id=sid, index=0, storage_request="local",
                          storage_id=f"{host}-local", size_mb=10240, format=DiskFormat.QCOW2,
                          path=f"/var/lib/ferry/{host}/disks/{sid}.qcow2", image_id=image_id))
        nics.append(dict(server_id=sid, index=0, network="net0",
                         mac="52:54:" + ":".join(f"{(i >> s) & 0xFF:02x}" for s in (24, 16, 8, 0))))
    with engine.begin() as conn:
        conn.execute(insert(m.Network), [dict(name="net0", wire="wire0")])
        conn.execute(insert(m.Image), [dict(
            id=image_id, name="bench-image", format=DiskFormat.QCOW2, size_bytes=1 << 20,
            virtual_size_mb=10240, checksum_sha256="0" * 64, status=ImageStatus.ACTIVE,
            min_memory_mb=64, file_name="bench.qcow2", created_at=now)])
        conn.execute(insert(m.Host), hosts)
        conn.execute(insert(m.Storage), storages)
        conn.execute(insert(m.HostStorage), host_storages)
        conn.execute(insert(m.HostNetwork), host_nets)
        for k in range(0, n_servers, 2000):
            conn.execute(insert(m.Server), servers[k:k + 2000])
            conn.execute(insert(m.Disk), disks[k:k + 2000])
            conn.execute(insert(m.ServerNetwork), nics[k:k + 2000])
    engine.dispose()
    return ids


# ---- the echo baseline ----------------------------------------------------------------------

def echo_server_main(port_file: str, payload_files: str) -> None:
    """Runs in a child process: a bare grpc.aio server answering each method with fixed bytes
    (a real region response captured before, so the client decodes the same message)."""
    payloads = {name: Path(f).read_bytes() for name, f in (kv.split("=", 1) for kv in payload_files.split(","))}

    async def serve() -> None:
        def handler(payload: bytes):
            async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
                return payload
            return grpc.unary_unary_rpc_method_handler(unary)

        server = grpc.aio.server()
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            ECHO_SERVICE, {name: handler(p) for name, p in payloads.items()})])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        Path(port_file).write_text(str(port))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.stop(0.5)

    asyncio.run(serve())


def start_echo(tmp: Path, payloads: dict[str, bytes]) -> tuple[subprocess.Popen, str]:
    port_file = tmp / "echo.port"
    files = {}
    for name, data in payloads.items():
        files[name] = tmp / f"echo-{name}.bin"
        files[name].write_bytes(data)
    spec = ",".join(f"{k}={v}" for k, v in files.items())
    proc = subprocess.Popen([sys.executable, __file__, "--echo-server", str(port_file), spec],
                            stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 20
    while not port_file.exists() or not port_file.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("echo server did not start")
        time.sleep(0.02)
    return proc, f"127.0.0.1:{port_file.read_text()}"


# ---- measuring ------------------------------------------------------------------------------

class Workload:
    """One RPC with its request factory, callable raw (bytes) on any channel."""

    def __init__(self, name: str, method: str, make_request, serializer, deserializer) -> None:
        self.name, self.method, self.make_request = name, method, make_request
        self.serializer, self.deserializer = serializer, deserializer


def measure_latency(address: str, w: Workload, seconds: float, max_calls: int = 20000) -> dict:
    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as ch:
        call = ch.unary_unary(w.method, request_serializer=w.serializer, response_deserializer=w.deserializer)
        for _ in range(50):  # warm up the channel and the server's caches
            call(w.make_request(), timeout=10)
        lat: list[float] = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline and len(lat) < max_calls:
            req = w.make_request()
            t0 = time.perf_counter()
            call(req, timeout=10)
            lat.append(time.perf_counter() - t0)
    lat.sort()
    return {"calls": len(lat), "p50_ms": 1000 * lat[len(lat) // 2],
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(len(lat) * 0.99))],
            "mean_ms": 1000 * statistics.fmean(lat)}


def measure_throughput(address: str, w: Workload, seconds: float, concurrency: int = 16) -> dict:
    async def run() -> dict:
        async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as ch:
            call = ch.unary_unary(w.method, request_serializer=w.serializer,
                                  response_deserializer=w.deserializer)
            for _ in range(20):
                await call(w.make_request(), timeout=10)
            done = 0
            deadline = time.perf_counter() + seconds

            async def worker() -> None:
                nonlocal done
                while time.perf_counter() < deadline:
                    await call(w.make_request(), timeout=10)
                    done += 1

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            elapsed = time.perf_counter() - t0
        return {"calls": done, "seconds": elapsed, "rps": done / elapsed, "concurrency": concurrency}

    return asyncio.run(run())


def region_workloads(server_ids: list[str]) -> list[Workload]:
    from ferry_proto.region.v1 import server_service_pb2 as pb

    rng = random.Random(7)

    def get_req():
        return pb.GetServerRequest(id=rng.choice(server_ids))

    def list_req(details: bool):
        return lambda: pb.ListServersRequest(scope=pb.LIST_SCOPE_SYSTEM, page_size=100, details=details)

    ser = lambda m: m.SerializeToString()  # noqa: E731
    return [
        Workload("GetServer", "/ferry.region.v1.ServerService/GetServer", get_req, ser,
                 pb.GetServerResponse.FromString),
        Workload("ListServers(100)", "/ferry.region.v1.ServerService/ListServers", list_req(False), ser,
                 pb.ListServersResponse.FromString),
        Workload("ListServers(100, details)", "/ferry.region.v1.ServerService/ListServers", list_req(True), ser,
                 pb.ListServersResponse.FromString),
    ]


def echo_workload(name: str, w: Workload) -> Workload:
    """The same requests and the same response decoding as `w`, against the echo service."""
    return Workload(f"echo[{name}]", f"/{ECHO_SERVICE}/{name}", w.make_request, w.serializer, w.deserializer)


def sample_response(address: str, w: Workload) -> bytes:
    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as ch:
        resp = ch.unary_unary(w.method, request_serializer=w.serializer,
                              response_deserializer=w.deserializer)(w.make_request(), timeout=10)
    return resp.SerializeToString()


# ---- main -----------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description="Ferry region API benchmark")
    ap.add_argument("--servers", type=int, default=10_000)
    ap.add_argument("--hosts", type=int, default=1_000)
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each measurement")
    ap.add_argument("--concurrency", type=int, default=16, help="calls in flight for throughput")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    ap.add_argument("--echo-server", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.echo_server:
        echo_server_main(*args.echo_server)
        return 0

    from ferry_compose import Cluster, ClusterSpec

    def overtime(*_: object) -> None:
        raise TimeoutError(f"benchmark exceeded {GLOBAL_LIMIT_S} s")

    signal.signal(signal.SIGALRM, overtime)
    signal.alarm(GLOBAL_LIMIT_S)
    t_start = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="ferry-bench-"))
    cluster = None
    echo = None
    try:
        (tmp / "region").mkdir()
        t0 = time.monotonic()
        ids = build_inventory(tmp / "region" / "region.db", args.hosts, args.servers)
        t_insert = time.monotonic() - t0
        print(f"inventory: {args.hosts} hosts, {len(ids)} servers inserted in {t_insert:.1f} s", flush=True)

        cluster = Cluster(ClusterSpec(dir=tmp, hosts=1, accel="tcg", base_port=0, log_level="WARNING",
                                      ready_timeout=90))
        t0 = time.monotonic()
        cluster.up()
        print(f"cluster up in {time.monotonic() - t0:.1f} s; region {cluster.region_address}", flush=True)

        workloads = region_workloads(ids)
        echo_names = {"GetServer": "Get", "ListServers(100)": "List", "ListServers(100, details)": "ListDetails"}
        samples = {w.name: sample_response(cluster.region_address, w) for w in workloads}
        echo, echo_addr = start_echo(tmp, {echo_names[n]: data for n, data in samples.items()})

        results: dict[str, dict] = {}
        for w in workloads:
            e = echo_workload(echo_names[w.name], w)
            for target, addr, name in ((w, cluster.region_address, w.name), (e, echo_addr, e.name)):
                lat = measure_latency(addr, target, args.seconds)
                thr = measure_throughput(addr, target, args.seconds, args.concurrency)
                results[name] = {**lat, "rps": thr["rps"], "response_bytes": len(samples[w.name])}
                print(f"  {name:<28} p50 {lat['p50_ms']:7.2f} ms  p99 {lat['p99_ms']:7.2f} ms  "
                      f"{thr['rps']:8.0f} calls/s", flush=True)

        print("\nRegion API, 10,000 servers / 1,000 hosts in SQLite, one client process, loopback:")
        print(f"{'workload':<28}{'resp B':>8}{'p50 ms':>9}{'p99 ms':>9}{'calls/s':>10}"
              f"{'echo p50':>10}{'echo p99':>10}{'echo/s':>9}{'thr ratio':>11}{'p99 ratio':>11}")
        for w in workloads:
            r, e = results[w.name], results[f"echo[{echo_names[w.name]}]"]
            print(f"{w.name:<28}{r['response_bytes']:>8}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['rps']:>10.0f}"
                  f"{e['p50_ms']:>10.2f}{e['p99_ms']:>10.2f}{e['rps']:>9.0f}"
                  f"{r['rps'] / e['rps']:>11.2f}{r['p99_ms'] / e['p99_ms']:>11.1f}")
        get, get_echo = results["GetServer"], results["echo[Get]"]
        lst = results["ListServers(100)"]
        goal_list = lst["p99_ms"] < 20.0
        goal_get = get["rps"] >= get_echo["rps"] / 3
        print(f"\ngoal ListServers(100) p99 < 20 ms: {lst['p99_ms']:.2f} ms -> {'met' if goal_list else 'MISSED'}")
        print(f"goal GetServer >= 1/3 of echo throughput: {get['rps']:.0f} / {get_echo['rps']:.0f} = "
              f"{get['rps'] / get_echo['rps']:.2f} -> {'met' if goal_get else 'MISSED'}")
        print(f"(total {time.monotonic() - t_start:.0f} s)")
        if args.json:
            print(json.dumps({"results": results, "goals": {"list_p99": goal_list, "get_throughput": goal_get}},
                             indent=2))
        return 0
    finally:
        signal.alarm(0)
        if echo is not None:
            echo.terminate()
            try:
                echo.wait(timeout=5)
            except subprocess.TimeoutExpired:
                echo.kill()
        if cluster is not None:
            cluster.down()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
