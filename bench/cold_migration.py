#!/usr/bin/env python3
"""Cold migration benchmark: Ferry's agent-to-agent disk copy against `cp` and `qemu-img convert`.

    .venv/bin/python bench/cold_migration.py [--dense-mb 2048] [--sparse-gb 10] [--sparse-data-mb 100]

1. Starts a 2-host cluster with the launcher (etcd, region, scheduler, agents on 127.0.0.x).
2. Dense: a server with a data disk of --dense-mb, fully written with qemu-io; times the
   migration task end to end (schedule, copy, verify, switch, source cleanup) and, in the same
   run, `cp` and `qemu-img convert -O qcow2` of the same file between two folders.
3. Sparse: a --sparse-gb data disk holding --sparse-data-mb; times its migration against `cp`
   of a file of --sparse-data-mb (the time to copy that much data).
4. Resume: the dense migration again, capped, the source agent killed at 50 %, then a retry;
   prints the retry's time against a full uncapped copy.

Goals (issue 5): dense >= 0.8 of cp throughput; sparse within 2x of copying its data.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fixtures.cluster import region_client, start_cluster

MIB = 1024 * 1024


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def timed(fn) -> float:
    t = time.monotonic()
    fn()
    return time.monotonic() - t


def drop_caches() -> None:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass


def create(client, name: str, data_mb: int, host_id: str):
    resp = client.servers.create(name, "bench-img", memory_mb=64, data_disks=[data_mb],
                                 prefer_host=host_id)
    client.wait_task(resp.task_id, timeout=300)
    return client.servers.get(name)


def migrate(client, name: str, target: str, **kw) -> float:
    t = time.monotonic()
    resp = client.migrations.migrate(name, prefer_host=target, **kw)
    client.wait_task(resp.task_id, timeout=1800)
    return time.monotonic() - t


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dense-mb", type=int, default=2048)
    ap.add_argument("--sparse-gb", type=int, default=10)
    ap.add_argument("--sparse-data-mb", type=int, default=100)
    a = ap.parse_args()
    from ferry_host.testguest.build import build_image

    with tempfile.TemporaryDirectory(prefix="ferry-bench-") as tmp:
        tmp_p = Path(tmp)
        c = start_cluster(tmp_p / "cluster", hosts=2)
        try:
            client = region_client(c)
            img = build_image(tmp_p / "guest.img", dirty_mb=2)
            client.images.create("bench-img", str(img))
            h1, h2 = c.hosts[0].host_id, c.hosts[1].host_id

            # Dense.
            s = create(client, "bench-dense", a.dense_mb, h1)
            data = sorted(s.disks, key=lambda d: d.index)[1].path
            writes = []
            for off in range(0, a.dense_mb, 256):
                writes += ["-c", f"write -P 0x5a {off}M {min(256, a.dense_mb - off)}M"]
            sh("qemu-io", "-f", "qcow2", *writes, data)
            (tmp_p / "a").mkdir()
            (tmp_p / "b").mkdir()
            ref = tmp_p / "a" / "dense.qcow2"
            sh("cp", data, str(ref))
            drop_caches()
            t_cp = timed(lambda: sh("cp", str(ref), str(tmp_p / "b" / "cp.qcow2")))
            drop_caches()
            t_conv = timed(lambda: sh("qemu-img", "convert", "-O", "qcow2", str(ref),
                                      str(tmp_p / "b" / "conv.qcow2")))
            for f in ("cp.qcow2", "conv.qcow2"):
                (tmp_p / "b" / f).unlink()
            drop_caches()
            t_ferry = migrate(client, "bench-dense", h2)
            mb = a.dense_mb
            print(f"dense {mb} MiB: ferry {t_ferry:.2f}s ({mb / t_ferry:.0f} MiB/s), "
                  f"cp {t_cp:.2f}s ({mb / t_cp:.0f} MiB/s), qemu-img convert {t_conv:.2f}s "
                  f"({mb / t_conv:.0f} MiB/s); ferry/cp throughput ratio {t_cp / t_ferry:.2f} "
                  f"(goal >= 0.8)")

            # Resume after an interruption at 50 %.
            src = next(h for h in c.hosts if h.host_id == h2)
            resp = client.migrations.migrate("bench-dense", prefer_host=h1,
                                             max_bandwidth_mb=max(mb // 8, 50))
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                p = client.servers.get("bench-dense").progress
                if p.disk_bytes_total and p.disk_bytes_done >= p.disk_bytes_total // 2:
                    break
                time.sleep(0.2)
            c.stop_process(src.name, sig=signal.SIGKILL)
            try:
                client.wait_task(resp.task_id, timeout=120)
            except Exception as exc:  # noqa: BLE001 - expected: migrate_failed
                print(f"interrupted copy ended as expected: {str(exc)[:400]}")
            c.start_process(src.name)
            c.wait_hosts_online([h2])
            t_resume = migrate(client, "bench-dense", h1)
            print(f"resume after 50 %: retry took {t_resume:.2f}s vs a full copy {t_ferry:.2f}s "
                  f"({t_resume / t_ferry:.2f}x)")

            # Sparse.
            s = create(client, "bench-sparse", a.sparse_gb * 1024, h1)
            data = sorted(s.disks, key=lambda d: d.index)[1].path
            sh("qemu-io", "-f", "qcow2", "-c", f"write -P 0x33 0 {a.sparse_data_mb}M", data)
            plain = tmp_p / "a" / "plain.bin"
            sh("dd", "if=/dev/urandom", f"of={plain}", "bs=1M", f"count={a.sparse_data_mb}")
            drop_caches()
            t_plain = timed(lambda: sh("cp", str(plain), str(tmp_p / "b" / "plain.bin")))
            t_sparse = migrate(client, "bench-sparse", h2)
            sent = client.servers.get("bench-sparse").progress.disk_bytes_total
            print(f"sparse {a.sparse_gb} GiB holding {a.sparse_data_mb} MiB: ferry {t_sparse:.2f}s "
                  f"({sent / MIB:.0f} MiB sent), cp of {a.sparse_data_mb} MiB {t_plain:.2f}s; "
                  f"ratio {t_sparse / t_plain:.1f}x (goal <= 2x; ferry includes task overhead)")
            client.close()
            for h in c.hosts:
                for line in (c.plan.logs / f"{h.name}.log").read_text().splitlines():
                    if any(k in line for k in ("copied and verified", "resuming at", "starting over", "pull of guest", "SHA-256")):
                        print("  ", h.name, line.split(": ", 1)[-1])
        finally:
            c.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
