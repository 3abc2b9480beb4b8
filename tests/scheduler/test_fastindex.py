"""The numpy host index answers exactly as the plain scan (every filter on every host):
same candidates, scores, order, storage choices and rejected hosts with the same reasons,
on random clusters and random requests, while reservations and host updates come and go."""

from __future__ import annotations

import random

import pytest

pytest.importorskip("numpy")
from ferry_proto.region.v1 import resources_pb2
from ferry_scheduler.errors import NoHostFits
from ferry_scheduler.model import DiskRequest, PlacementKind
from sched_helpers import World, host, request

MODELS = [("Intel Xeon", "0x1"), ("Intel Xeon", "0x2"), ("AMD EPYC", "0x9")]


def random_host(rnd: random.Random, i: int):
    model, micro = rnd.choice(MODELS)
    cpu = rnd.choice((0, 4, 8, 16))
    mem = rnd.choice((0, 4096, 8192, 16384))
    shared = {sid: rnd.choice((0, 5_000, 50_000)) for sid in ("s0", "s1") if rnd.random() < 0.6}
    return host(f"h{i:03d}", rnd.choice((f"n{i:03d}", "dup", f"x{i % 7}")),
                cpu_count=cpu, cpu_used=rnd.randint(0, max(cpu, 1)),
                cpu_cmtbound=rnd.choice((0.0, 1.0, 2.0)), mem_size_mb=mem,
                mem_used_mb=rnd.randint(0, max(mem, 1)), mem_reserved_mb=rnd.choice((0, 512)),
                enabled=rnd.random() < 0.9,
                status=(resources_pb2.HOST_STATUS_RUNNING if rnd.random() < 0.9
                        else resources_pb2.HOST_STATUS_MAINTENANCE
                        if hasattr(resources_pb2, "HOST_STATUS_MAINTENANCE") else 0),
                host_status=(resources_pb2.HOST_HEALTH_ONLINE if rnd.random() < 0.9
                             else resources_pb2.HOST_HEALTH_OFFLINE),
                local_free_mb=rnd.choice((None, 0, 3_000, 20_000, 100_000)),
                shared=shared, wire=rnd.choice(("w0", "w1")),
                networks=rnd.choice((("net0",), ("net0", "net1"), ("net9",), ())),
                cpu_model=model, cpu_microcode=micro,
                kernel_version=rnd.choice(("6.1.0", "6.5.0")),
                server_count=rnd.randint(0, 5))


def random_request(rnd: random.Random, hosts, n: int):
    kind = rnd.choice(list(PlacementKind))
    disks = []
    for _ in range(rnd.randint(0, 3)):
        c = rnd.random()
        size = rnd.choice((0, 1_000, 10_000, 40_000))
        if c < 0.4:
            disks.append(DiskRequest(size))
        elif c < 0.7:
            disks.append(DiskRequest(size, shared=True, storage_id=rnd.choice(("s0", "s1", "s9"))))
        elif c < 0.85:
            disks.append(DiskRequest(size, shared=True))
        else:
            disks.append(DiskRequest(size, storage_id=f"{rnd.choice(hosts).id}-local"))
    src = rnd.choice(hosts).id if kind is not PlacementKind.CREATE else ""
    live = kind is PlacementKind.LIVE_MIGRATE
    return request(rnd.randint(1, 6), rnd.choice((256, 1024, 4096)), server_id=f"vm{n}",
                   disks=tuple(disks), networks=tuple(rnd.sample(("net0", "net1"), rnd.randint(0, 2))),
                   kind=kind, exclude=frozenset([src] if src and rnd.random() < 0.5 else []) | (
                       {rnd.choice(hosts).id} if rnd.random() < 0.2 else set()),
                   source_host_id=src, skip_cpu_check=live and rnd.random() < 0.3,
                   skip_kernel_check=live and rnd.random() < 0.3)


def answer(fn, req):
    try:
        res = fn(req)
    except NoHostFits as e:
        return ("none", e.reason, e.message, e.result.rejected)
    sel = res.selected.host_id if res.selected else None
    return (sel, res.candidates, res.rejected)


@pytest.mark.parametrize("seed", range(12))
def test_fast_index_equals_plain_scan(seed):
    rnd = random.Random(seed)
    hosts = [random_host(rnd, i) for i in range(rnd.choice((5, 40, 150)))]
    fast, plain = World(*hosts), World(*hosts, fast=False)
    assert fast.placer.index is not None and plain.placer.index is None
    for n in range(60):
        req = random_request(rnd, hosts, n)
        assert answer(fast.placer.forecast, req) == answer(plain.placer.forecast, req), req
        a, b = answer(fast.placer.select, req), answer(plain.placer.select, req)
        assert a == b, req
        step = rnd.random()
        if step < 0.2:       # the region reports a host again, changed
            i = rnd.randrange(len(hosts))
            hosts[i] = random_host(rnd, int(hosts[i].id[1:]))
            for w in (fast, plain):
                w.cache.apply_changes([hosts[i]], [])
        elif step < 0.25 and len(hosts) > 3:
            gone = hosts.pop(rnd.randrange(len(hosts)))
            for w in (fast, plain):
                w.cache.apply_changes([], [gone.id])
        elif step < 0.4:
            dt = rnd.choice((10, 70))
            for w in (fast, plain):
                w.clock.advance(dt)
        elif step < 0.5 and a[0] != "none":
            for w in (fast, plain):
                for r in list(w.book.live()):
                    if random.Random(r.server_id).random() < 0.5:
                        w.placer.release(r.id)
