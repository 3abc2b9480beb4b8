#!/usr/bin/env python3
"""Live migration benchmark: Ferry's agent-level live migration against a bare QMP
migration of the same guest driven by a minimal script (the physical baseline).

    .venv/bin/python bench/live_migration.py [--runs 5] [--bandwidth-mb 0] [--disk-mb 1024]

Two in-process host agents on 127.0.0.71/72 (TCG), a fake region serving the test
guest image. Scenarios: an idle guest, a dirtying guest (16 MiB per pass), and a guest
with a --disk-mb local data disk (--disk-data-mb of it written). Each run moves the guest
one way with Ferry (PrepareIncoming + MigrateGuest + FinishIncoming + CleanupSource) and
back with the bare script (target QEMU -incoming, NBD export, drive-mirror, migrate with
pause-before-switchover, block-job-cancel, migrate-continue), so both move the same guest.

Reports per scenario: total time ratio Ferry/bare (goal <= 1.10 plus at most 1 s of
fixed preparation), Ferry's measured downtime against the limit (goal p95 <= limit + 50 ms),
and the time to the first progress message.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import grpc
from ferry_host.app import start_agent
from ferry_host.config import AgentConfig
from ferry_host.driver.qmp import QmpDriver
from ferry_host.testguest.build import build_image
from ferry_proto.host.v1 import agent_pb2 as pb
from ferry_proto.host.v1 import (
    agent_pb2_grpc,
    migration_pb2_grpc,
)
from ferry_proto.host.v1 import migration_pb2 as mpb
from host.fake_region import FakeImage, FakeRegion

LIMIT_MS = 300
MIB = 1024 * 1024


def spec_for(gid: str, host: str, sha: str, image: str, disk_mb: int) -> pb.GuestSpec:
    disks = [pb.DiskSpec(disk_id=f"{gid}-sys", index=0, storage_id=f"{host}-local", size_mb=32,
                         image_id=image, image_checksum_sha256=sha, image_format="raw")]
    if disk_mb:
        disks.append(pb.DiskSpec(disk_id=f"{gid}-dat", index=1, storage_id=f"{host}-local",
                                 size_mb=disk_mb))
    return pb.GuestSpec(guest_id=gid, name=gid, vcpu_count=1, memory_mb=256, disks=disks)


def retarget(spec: pb.GuestSpec, host: str) -> pb.GuestSpec:
    out = pb.GuestSpec()
    out.CopyFrom(spec)
    for d in out.disks:
        d.storage_id = f"{host}-local"
    return out


async def ferry_move(agents, src, dst, spec, bw):
    mig = {h: migration_pb2_grpc.MigrationAgentServiceStub(grpc.aio.insecure_channel(a.address))
           for h, a in agents.items()}
    t0 = time.monotonic()
    prep = await mig[dst].PrepareIncoming(mpb.PrepareIncomingRequest(spec=retarget(spec, dst)))
    first = None
    last = None
    req = mpb.MigrateGuestRequest(guest_id=spec.guest_id, migration_uri=prep.migration_uri,
                                  nbd_address=prep.nbd_address, exports=prep.exports,
                                  max_bandwidth_mb=bw, downtime_limit_ms=LIMIT_MS)
    async for msg in mig[src].MigrateGuest(req):
        first = first or time.monotonic() - t0
        last = msg
    if last.error:
        raise RuntimeError(last.error)
    await mig[dst].FinishIncoming(mpb.FinishIncomingRequest(guest_id=spec.guest_id))
    await mig[src].CleanupSource(mpb.CleanupSourceRequest(guest_id=spec.guest_id))
    return time.monotonic() - t0, last.downtime_ms, first


async def bare_move(agents, src, dst, spec, bw, region):
    """The minimal QMP script. Target disks are created beforehand (not timed)."""
    a, b = agents[src], agents[dst]
    gid = spec.guest_id
    await b.guests.prepare(__import__("ferry_host.convert", fromlist=["x"]).guest_def(
        retarget(spec, dst)), region)
    host = b.address.rsplit(":", 1)[0]
    t0 = time.monotonic()
    await b.guests.start_incoming(gid)
    qa, qb = a.driver.qmp, b.driver.qmp
    local = [d for d in spec.disks]
    from ferry_host.migration.incoming import free_port
    nport, mport = free_port(host), free_port(host)
    await qb(gid, "nbd-server-start", addr={"type": "inet", "data": {"host": host,
                                                                        "port": str(nport)}})
    for d in local:
        await qb(gid, "nbd-server-add", device=f"drive-{d.index}", name=f"d{d.index}",
                 writable=True)
    await qb(gid, "migrate-incoming", uri=f"tcp:{host}:{mport}")
    await qa(gid, "migrate-set-capabilities", capabilities=[
        {"capability": "pause-before-switchover", "state": True}])
    bps = bw * MIB if bw else 100 * 1024 * MIB
    await qa(gid, "migrate-set-parameters", **{"max-bandwidth": bps, "downtime-limit": LIMIT_MS})
    for d in local:
        await qa(gid, "drive-mirror", **{"job-id": f"m{d.index}", "device": f"drive-{d.index}",
                                         "target": f"nbd:{host}:{nport}:exportname=d{d.index}",
                                         "format": "raw", "mode": "existing",
                                         "sync": "top" if d.image_id else "full"})
    while not all(j.get("ready") for j in await qa(gid, "query-block-jobs")):
        await asyncio.sleep(0.01)
    await qa(gid, "migrate", uri=f"tcp:{host}:{mport}")
    while True:
        st = (await qa(gid, "query-migrate"))["status"]
        if st == "pre-switchover":
            for d in local:
                await qa(gid, "block-job-cancel", device=f"m{d.index}")
            while await qa(gid, "query-block-jobs"):
                await asyncio.sleep(0.002)
            await qa(gid, "migrate-continue", state="pre-switchover")
        elif st == "completed":
            break
        elif st in ("failed", "cancelled"):
            raise RuntimeError(st)
        await asyncio.sleep(0.005)
    while (await qb(gid, "query-status"))["status"] != "running":
        await asyncio.sleep(0.005)
    elapsed = time.monotonic() - t0
    await qb(gid, "nbd-server-stop")
    await a.guests.delete(gid)
    return elapsed


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--bandwidth-mb", type=int, default=0)
    ap.add_argument("--disk-mb", type=int, default=1024)
    ap.add_argument("--disk-data-mb", type=int, default=256)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="fbench-", dir="/tmp"))
    images = {"idle": build_image(root / "idle.img", dirty_mb=1, pass_ms=50),
              "dirty": build_image(root / "dirty.img", dirty_mb=16)}
    region = await FakeRegion(images={k: FakeImage(p.read_bytes())
                                      for k, p in images.items()}).start()
    agents = {}
    try:
        for i, h in enumerate(("h1", "h2")):
            agents[h] = await start_agent(AgentConfig(
                host_id=h, name=h, state_dir=root / h / "state", local_storage=root / h / "local",
                listen=f"127.0.0.7{i + 1}:0", region=region.address, etcd=None, accel="tcg"))
        scenarios = [("idle guest", "idle", 0), ("dirtying guest", "dirty", 0),
                     (f"guest with a {args.disk_mb} MiB local disk", "idle", args.disk_mb)]
        for title, image, disk_mb in scenarios:
            sha = hashlib.sha256(images[image].read_bytes()).hexdigest()
            gid = f"b-{image}-{disk_mb}"
            spec = spec_for(gid, "h1", sha, image, disk_mb)
            host = agent_pb2_grpc.HostAgentServiceStub(grpc.aio.insecure_channel(agents["h1"].address))
            await host.PrepareGuest(pb.PrepareGuestRequest(spec=spec, region_address=region.address))
            await host.StartGuest(pb.StartGuestRequest(guest_id=gid))
            if disk_mb:
                await agents["h1"].driver.qmp(gid, "human-monitor-command", **{
                    "command-line": f"qemu-io drive-1 \"write -P 0x5a 0 {args.disk_data_mb}M\""})
            await asyncio.sleep(2)
            ferry, bare, downs, firsts = [], [], [], []
            for _ in range(args.runs):
                total, down, first = await ferry_move(agents, "h1", "h2", spec, args.bandwidth_mb)
                ferry.append(total)
                downs.append(down)
                firsts.append(first)
                bare.append(await bare_move(agents, "h2", "h1", retarget(spec, "h2"),
                                            args.bandwidth_mb, region.address))
            fm, bm = statistics.median(ferry), statistics.median(bare)
            p95 = sorted(downs)[max(0, round(0.95 * len(downs)) - 1)]
            print(f"{title}: Ferry {fm:.3f}s, bare {bm:.3f}s, ratio {fm / bm:.2f} "
                  f"(goal <= 1.10 + 1 s fixed: {'ok' if fm <= 1.10 * bm + 1 else 'MISSED'}); "
                  f"downtime p95 {p95} ms vs limit {LIMIT_MS} "
                  f"({'ok' if p95 <= LIMIT_MS + 50 else 'MISSED'}); first progress "
                  f"{statistics.median(firsts) * 1000:.0f} ms", flush=True)
            await host.DeleteGuest(pb.DeleteGuestRequest(guest_id=gid))
    finally:
        for a in agents.values():
            await a.stop()
        for h in ("h1", "h2"):
            d = QmpDriver(root / h / "state")
            for gid in d.list_running():
                await d.stop(gid, timeout=2)
        await region.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
