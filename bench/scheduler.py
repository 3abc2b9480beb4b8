"""Scheduler benchmark: forecast latency, placement burst and memory at 1,000 and 10,000 hosts.

    .venv/bin/python bench/scheduler.py            # 1,000 and 10,000 hosts, about a minute
    .venv/bin/python bench/scheduler.py --hosts 1000 --quick

Measured in one run, on the same synthetic cluster:

- ferry (fast): the scheduler core as it runs (host cache fed by the region's
  changes, reservation book, numpy host index, memo of host-only rejection
  sentences): forecast latency p50/p99 of a live-migration forecast (CPU model,
  kernel, networks, storage), also with the memo emptied first, and the time
  of a burst of 1,000 placements (a dead host's guests: rescue of shared-disk
  servers, plus cold migrations with a local disk), each holding its reservation;
- ferry (plain scan): the same core with the index off (every filter on every host);
- the forecast over gRPC: a real scheduler on 127.0.0.1 whose cache is fed by a
  minimal region WatchHosts, called through the generated stub;
- naive baseline: every request reads every host (with its storages and
  networks) from a SQLite database and filters and scores them in Python, and
  a placement writes its reservation to the database.
- memory of the scheduler's view at 10,000 hosts (tracemalloc of cache, book
  and index) and the RSS growth of the process.

Goals (issue 3): forecast over 10,000 hosts p99 < 50 ms, 1,000 placements < 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import random
import resource
import sqlite3
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for sub in ("services/common", "services/scheduler", "gen"):
    sys.path.insert(0, str(ROOT / sub))

import grpc
from ferry_proto.region.v1 import host_service_pb2, host_service_pb2_grpc, resources_pb2
from ferry_proto.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc
from ferry_scheduler.app import SchedulerConfig, start_scheduler
from ferry_scheduler.cache import HostCache
from ferry_scheduler.convert import host_from_proto
from ferry_scheduler.errors import NoHostFits
from ferry_scheduler.model import DiskRequest, PlacementKind, PlacementRequest
from ferry_scheduler.placement import Placer
from ferry_scheduler.reservations import ReservationBook

MODELS = [("Intel Xeon Gold 6248", "0x5003302"), ("Intel Xeon Gold 6248", "0x5003006"),
          ("AMD EPYC 7543", "0xa001143")]
KERNELS = ["6.1.0-18-amd64", "6.1.0-21-amd64"]


# ---- the synthetic cluster ----

def make_hosts(n: int, seed: int = 7) -> list[resources_pb2.Host]:
    rnd = random.Random(seed)
    hosts = []
    for i in range(n):
        hid = f"host-{i:05d}"
        model, micro = MODELS[0] if rnd.random() < 0.85 else rnd.choice(MODELS[1:])
        cpu = rnd.choice((32, 48, 64, 96))
        mem = cpu * 4096
        wire = "wire0" if rnd.random() < 0.9 else "wire1"
        storages = [resources_pb2.HostStorage(
            storage_id=f"{hid}-local", name="local", kind=resources_pb2.STORAGE_KIND_LOCAL,
            path="/var/lib/ferry", capacity_mb=2_000_000, free_mb=rnd.randint(5_000, 1_500_000))]
        if rnd.random() < 0.9:
            storages.append(resources_pb2.HostStorage(
                storage_id="shared0", name="shared0", kind=resources_pb2.STORAGE_KIND_SHARED,
                path="/mnt/shared0", capacity_mb=100_000_000, free_mb=60_000_000))
        hosts.append(resources_pb2.Host(
            id=hid, name=f"node{i:05d}", access_address=f"10.0.{i // 250}.{i % 250}:7720",
            status=resources_pb2.HOST_STATUS_RUNNING,
            host_status=(resources_pb2.HOST_HEALTH_ONLINE if rnd.random() < 0.97
                         else resources_pb2.HOST_HEALTH_OFFLINE),
            enabled=rnd.random() < 0.97, hypervisor="kvm", cpu_model=model, cpu_microcode=micro,
            kernel_version=KERNELS[0] if rnd.random() < 0.9 else KERNELS[1],
            cpu_count=cpu, cpu_used=rnd.randint(0, cpu), cpu_cmtbound=2.0, mem_size_mb=mem,
            mem_used_mb=rnd.randint(0, mem), mem_cmtbound=1.0, mem_reserved_mb=2048,
            storages=storages, wire=wire, networks=["net0", "net1"] if wire == "wire0" else ["net9"],
            server_count=rnd.randint(0, 40)))
    return hosts


def source_of(hosts: list[resources_pb2.Host]) -> resources_pb2.Host:
    return next(h for h in hosts if h.cpu_model == MODELS[0][0] and h.cpu_microcode == MODELS[0][1]
                and h.kernel_version == KERNELS[0] and h.wire == "wire0"
                and any(s.storage_id == "shared0" for s in h.storages))


def live_request(src: resources_pb2.Host, i: int = 0) -> PlacementRequest:
    return PlacementRequest(
        server_id=f"vm-live-{i}", vcpu_count=4, memory_mb=8192,
        disks=(DiskRequest(40_960), DiskRequest(102_400, shared=True, storage_id="shared0")),
        networks=("net0",), kind=PlacementKind.LIVE_MIGRATE, source_host_id=src.id)


def burst_requests(src: resources_pb2.Host, n: int) -> list[PlacementRequest]:
    """A dead host's guests: most on shared storage (rescue), some with a local disk (migrate)."""
    out = []
    for i in range(n):
        if i % 5:
            out.append(PlacementRequest(
                server_id=f"vm-{i}", vcpu_count=2, memory_mb=4096,
                disks=(DiskRequest(20_480, shared=True, storage_id="shared0"),),
                networks=("net0",), kind=PlacementKind.RESCUE, source_host_id=src.id))
        else:
            out.append(PlacementRequest(
                server_id=f"vm-{i}", vcpu_count=2, memory_mb=4096,
                disks=(DiskRequest(20_480),), networks=("net0",),
                kind=PlacementKind.MIGRATE, source_host_id=src.id))
    return out


def build_core(protos: list[resources_pb2.Host], fast: bool) -> Placer:
    cache = HostCache()
    book = ReservationBook()
    cache.add_listener(book)
    cache.apply_snapshot([host_from_proto(h) for h in protos])
    placer = Placer(cache, book, fast=fast)
    gc.collect()          # steady state: the snapshot's garbage is not charged to a request
    return placer


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def time_forecasts(fn, count: int) -> tuple[float, float]:
    times = []
    for i in range(count):
        t = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), pct(times, 99)


def time_burst(placer: Placer, requests: list[PlacementRequest]) -> tuple[float, int]:
    t = time.perf_counter()
    placed = 0
    for r in requests:
        try:
            placer.select(r)
            placed += 1
        except NoHostFits:
            continue
    return time.perf_counter() - t, placed


# ---- the naive baseline: every host from SQLite per request ----

SCHEMA = """
CREATE TABLE hosts (id TEXT PRIMARY KEY, name TEXT, enabled INT, running INT, online INT,
  cpu_model TEXT, cpu_microcode TEXT, kernel TEXT, cpu_count INT, cpu_used INT, cpu_cmtbound REAL,
  mem_size INT, mem_used INT, mem_cmtbound REAL, mem_reserved INT, wire TEXT, server_count INT,
  held_cpu INT DEFAULT 0, held_mem INT DEFAULT 0, in_flight INT DEFAULT 0);
CREATE TABLE storages (host_id TEXT, storage_id TEXT, shared INT, free_mb INT, held_mb INT DEFAULT 0);
CREATE TABLE host_networks (host_id TEXT, network TEXT);
CREATE INDEX storages_host ON storages(host_id);
CREATE INDEX nets_host ON host_networks(host_id);
"""


class NaiveScheduler:
    def __init__(self, protos: list[resources_pb2.Host]) -> None:
        self.db = sqlite3.connect(":memory:")
        self.db.executescript(SCHEMA)
        R = resources_pb2
        self.db.executemany("INSERT INTO hosts VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,0,0,0)", [
            (h.id, h.name, h.enabled, h.status == R.HOST_STATUS_RUNNING,
             h.host_status == R.HOST_HEALTH_ONLINE, h.cpu_model, h.cpu_microcode, h.kernel_version,
             h.cpu_count, h.cpu_used, h.cpu_cmtbound, h.mem_size_mb, h.mem_used_mb, h.mem_cmtbound,
             h.mem_reserved_mb, h.wire, h.server_count) for h in protos])
        self.db.executemany("INSERT INTO storages VALUES (?,?,?,?,0)", [
            (h.id, s.storage_id, s.kind == R.STORAGE_KIND_SHARED, s.free_mb)
            for h in protos for s in h.storages])
        self.db.executemany("INSERT INTO host_networks VALUES (?,?)",
                            [(h.id, n) for h in protos for n in h.networks])
        self.db.commit()

    def evaluate(self, r: PlacementRequest) -> tuple[list[tuple[float, str]], dict[str, list[str]]]:
        hosts = self.db.execute("SELECT * FROM hosts").fetchall()
        storages: dict[str, list[tuple]] = {}
        for row in self.db.execute("SELECT host_id, storage_id, shared, free_mb - held_mb FROM storages"):
            storages.setdefault(row[0], []).append(row[1:])
        nets: dict[str, set[str]] = {}
        for hid, net in self.db.execute("SELECT host_id, network FROM host_networks"):
            nets.setdefault(hid, set()).add(net)
        src = next((h for h in hosts if h[0] == r.source_host_id), None)
        ok, rejected = [], {}
        for h in hosts:
            (hid, name, enabled, running, online, model, micro, kernel, cpu_count, cpu_used, cpu_cb,
             mem_size, mem_used, mem_cb, mem_res, _wire, servers, held_cpu, held_mem, flight) = h
            why = []
            if not (enabled and running and online):
                why.append("status")
            if hid == r.source_host_id:
                why.append("source_host")
            cpu_free = int(cpu_count * (cpu_cb or 1)) - cpu_used - held_cpu
            mem_free = int(mem_size * (mem_cb or 1)) - mem_res - mem_used - held_mem
            if cpu_free < r.vcpu_count:
                why.append("cpu")
            if mem_free < r.memory_mb:
                why.append("memory")
            st = storages.get(hid, [])
            local = sum(d.size_mb for d in r.disks if not d.shared)
            if local and not any(not sh and free >= local for _, sh, free in st):
                why.append("storage")
            for d in r.disks:
                if d.shared and not any(sid == d.storage_id and sh for sid, sh, _ in st):
                    why.append("storage")
            if any(n not in nets.get(hid, ()) for n in r.networks):
                why.append("network")
            if r.kind is PlacementKind.LIVE_MIGRATE and src is not None:
                if (model, micro) != (src[5], src[6]):
                    why.append("cpu_model")
                if kernel != src[7]:
                    why.append("kernel")
            if why:
                rejected[hid] = why
            else:
                score = ((mem_free - r.memory_mb) / max(mem_size, 1)
                         + (cpu_free - r.vcpu_count) / max(cpu_count, 1)
                         + 0.5 / (1 + flight) + 0.5 / (1 + servers)) / 3 * 100
                ok.append((round(score, 6), name, hid))
        ok.sort(key=lambda x: (-x[0], x[1], x[2]))
        return [(s, hid) for s, _, hid in ok], rejected

    def select(self, r: PlacementRequest) -> str | None:
        ranked, _ = self.evaluate(r)
        if not ranked:
            return None
        hid = ranked[0][1]
        self.db.execute("UPDATE hosts SET held_cpu = held_cpu + ?, held_mem = held_mem + ?, "
                        "in_flight = in_flight + 1 WHERE id = ?", (r.vcpu_count, r.memory_mb, hid))
        self.db.commit()
        return hid


# ---- over gRPC: a minimal region WatchHosts feeding a real scheduler ----

class SnapshotRegion(host_service_pb2_grpc.HostServiceServicer):
    def __init__(self, hosts: list[resources_pb2.Host]) -> None:
        self.hosts = hosts

    async def WatchHosts(self, request, context):
        yield host_service_pb2.WatchHostsResponse(hosts=self.hosts, snapshot=True)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:      # the bench is over
            return


async def grpc_forecast(protos: list[resources_pb2.Host], count: int) -> tuple[float, float, int]:
    opts = [("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)]
    region = grpc.aio.server(options=opts)
    host_service_pb2_grpc.add_HostServiceServicer_to_server(SnapshotRegion(protos), region)
    port = region.add_insecure_port("127.0.0.1:0")
    await region.start()
    sched = await start_scheduler(SchedulerConfig(listen="127.0.0.1:0", region=f"127.0.0.1:{port}"))
    try:
        await sched.wait_synced(timeout=60)
        src = source_of(protos)
        req = scheduler_pb2.ForecastRequest(
            requirements=scheduler_pb2.ServerRequirements(
                server_id="vm-live", vcpu_count=4, memory_mb=8192, networks=["net0"],
                disks=[scheduler_pb2.DiskRequirement(size_mb=40_960),
                       scheduler_pb2.DiskRequirement(size_mb=102_400, shared=True,
                                                     storage_id="shared0")]),
            kind=scheduler_pb2.PLACEMENT_KIND_LIVE_MIGRATE, source_host_id=src.id)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{sched.port}", options=opts) as ch:
            stub = scheduler_pb2_grpc.SchedulerServiceStub(ch)
            resp = await stub.Forecast(req, timeout=30)      # warm-up
            times = []
            for _ in range(count):
                t = time.perf_counter()
                resp = await stub.Forecast(req, timeout=30)
                times.append((time.perf_counter() - t) * 1000)
        return statistics.median(times), pct(times, 99), resp.ByteSize()
    finally:
        await sched.stop(grace=0)
        await region.stop(0.5)


# ---- memory ----

def rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_of_view(n: int) -> tuple[float, float]:
    protos = make_hosts(n, seed=11)
    gc.collect()
    rss0 = rss_mb()
    tracemalloc.start()
    placer = build_core(protos, fast=True)
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss1 = rss_mb()
    del placer
    return current / 2**20, rss1 - rss0


# ---- the run ----

def run_size(n: int, quick: bool) -> dict[str, float]:
    protos = make_hosts(n)
    src = source_of(protos)
    out: dict[str, float] = {}
    nfc = 50 if quick else 200
    burst = 200 if quick else 1000

    fast = build_core(protos, fast=True)
    result = fast.forecast(live_request(src))
    out["candidates"], out["rejected"] = len(result.candidates), len(result.rejected)
    out["fast_p50"], out["fast_p99"] = time_forecasts(lambda i: fast.forecast(live_request(src, i)), nfc)

    def cold(i: int) -> None:      # nothing remembered: every rejection sentence is built
        fast._reason_memo.clear()
        fast.forecast(live_request(src, i))
    out["cold_p50"], out["cold_p99"] = time_forecasts(cold, max(20, nfc // 4))
    out["fast_burst_s"], out["fast_placed"] = time_burst(fast, burst_requests(src, burst))

    plain = build_core(protos, fast=False)
    check = plain.forecast(live_request(src))
    assert [(c.host_id, c.score) for c in check.candidates] == \
        [(c.host_id, c.score) for c in result.candidates], "fast and plain scans disagree"
    assert [r.host_id for r in check.rejected] == [r.host_id for r in result.rejected]
    nplain = max(5, nfc // (10 if n >= 10_000 else 4))
    out["plain_p50"], out["plain_p99"] = time_forecasts(lambda i: plain.forecast(live_request(src, i)),
                                                        nplain)
    nb = max(20, burst // (20 if n >= 10_000 else 5))
    t, _ = time_burst(plain, burst_requests(src, nb))
    out["plain_burst_s"] = t * burst / nb

    naive = NaiveScheduler(protos)
    nnaive = max(5, nfc // (20 if n >= 10_000 else 5))
    out["naive_p50"], out["naive_p99"] = time_forecasts(lambda i: naive.evaluate(live_request(src, i)),
                                                        nnaive)
    t = time.perf_counter()
    for r in burst_requests(src, nb):
        naive.select(r)
    out["naive_burst_s"] = (time.perf_counter() - t) * burst / nb

    out["grpc_p50"], out["grpc_p99"], out["grpc_bytes"] = asyncio.run(
        grpc_forecast(protos, 30 if quick else 100))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hosts", type=int, action="append",
                    help="cluster size (repeatable; default 1000 and 10000)")
    ap.add_argument("--quick", action="store_true", help="fewer samples")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sizes = args.hosts or [1000, 10_000]
    burst = 200 if args.quick else 1000
    started = time.perf_counter()
    ok = True
    for n in sizes:
        o = run_size(n, args.quick)
        print(f"\n== {n:,} hosts ({int(o['candidates'])} candidates, {int(o['rejected'])} rejected "
              f"for a live-migration forecast) ==")
        print(f"forecast in-process  ferry p50 {o['fast_p50']:7.2f} ms  p99 {o['fast_p99']:7.2f} ms | "
              f"plain scan p50 {o['plain_p50']:7.2f} ms | naive SQLite p50 {o['naive_p50']:8.2f} ms  "
              f"p99 {o['naive_p99']:8.2f} ms")
        print(f"  (ferry with its reason memo emptied before each forecast: p50 "
              f"{o['cold_p50']:.2f} ms, p99 {o['cold_p99']:.2f} ms)")
        print(f"forecast over gRPC   ferry p50 {o['grpc_p50']:7.2f} ms  p99 {o['grpc_p99']:7.2f} ms "
              f"({int(o['grpc_bytes']):,} bytes per answer)")
        print(f"burst of {burst:,} placements: ferry {o['fast_burst_s']:.3f} s "
              f"({burst / o['fast_burst_s']:,.0f}/s, {int(o['fast_placed'])} placed) | "
              f"plain scan {o['plain_burst_s']:.2f} s (extrapolated) | naive SQLite "
              f"{o['naive_burst_s']:.2f} s (extrapolated)")
        print(f"ratios: forecast p50 naive/ferry {o['naive_p50'] / o['fast_p50']:.0f}x, "
              f"plain/ferry {o['plain_p50'] / o['fast_p50']:.1f}x; burst naive/ferry "
              f"{o['naive_burst_s'] / o['fast_burst_s']:.0f}x, plain/ferry "
              f"{o['plain_burst_s'] / o['fast_burst_s']:.1f}x")
        if n >= 10_000:
            goal_f = o["fast_p99"] < 50
            goal_b = o["fast_burst_s"] * (1000 / burst) < 1.0
            ok = ok and goal_f and goal_b
            print(f"goals at {n:,} hosts: forecast p99 < 50 ms: {'MET' if goal_f else 'MISSED'} "
                  f"(gRPC p99 {o['grpc_p99']:.1f} ms); 1,000 placements < 1 s: "
                  f"{'MET' if goal_b else 'MISSED'}")
    traced, rss = memory_of_view(10_000)
    print(f"\nscheduler memory at 10,000 hosts: {traced:.1f} MiB traced (cache, book, index), "
          f"RSS +{rss:.1f} MiB")
    print(f"(run time {time.perf_counter() - started:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
