"""`ferry-cluster up | down | status`: a Ferry cluster as local processes on one machine."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .cluster import Cluster
from .errors import ComposeError, ProcessFailed
from .spec import ACCELS, DEFAULT_BASE_PORT, ClusterSpec


def _accel_list(text: str) -> list[str]:
    items = [a.strip() for a in text.split(",") if a.strip()]
    bad = [a for a in items if a not in ACCELS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown accelerator(s) {', '.join(bad)}; use {', '.join(ACCELS)}")
    return items


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ferry-cluster",
        description="Run a Ferry cluster (etcd, region, scheduler, N host agents) as local processes.")
    parser.add_argument("--dir", type=Path, default=Path(".cluster"),
                        help="folder for state, logs and storage (default: .cluster)")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dir", type=Path, default=argparse.SUPPRESS,
                        help="folder for state, logs and storage (default: .cluster)")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", parents=[common], help="start the cluster and wait until every part serves")
    up.add_argument("--hosts", type=int, default=3, help="number of host agents (default: 3)")
    up.add_argument("--accel", choices=ACCELS, default="auto",
                    help="accelerator of every host: auto, kvm or tcg (default: auto)")
    up.add_argument("--accel-per-host", type=_accel_list, metavar="A,B,...",
                    help="one accelerator per host, e.g. tcg,kvm,tcg (overrides --accel)")
    up.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT,
                    help=f"region on B, scheduler B+10, agents B+20 (each on 127.0.0.1x), etcd B+30/B+31; "
                         f"0 picks free ports (default: {DEFAULT_BASE_PORT})")
    up.add_argument("--lease-ttl", type=int, help="etcd health lease TTL of the agents, seconds")
    up.add_argument("--log-level", default="INFO", help="log level of the region (default: INFO)")
    up.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for readiness (default: 120)")
    up.add_argument("--fresh", action="store_true",
                    help="forget the previous cluster's inventory, etcd data and disks first")

    down = sub.add_parser("down", parents=[common],
                          help="stop every process and QEMU guest of the cluster (idempotent)")
    down.add_argument("--timeout", type=float, default=10.0,
                      help="seconds between SIGTERM and SIGKILL (default: 10)")
    down.add_argument("--purge", action="store_true", help="also delete the cluster folder")

    status = sub.add_parser("status", parents=[common], help="each process: pid, address, alive, health")
    status.add_argument("--output", "-o", choices=("table", "json"), default="table")
    return parser


def _print_table(rows: list[dict]) -> None:
    cols = ["name", "kind", "pid", "address", "alive", "health"]
    cells = [[str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(cols)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def cmd_up(args: argparse.Namespace) -> int:
    spec = ClusterSpec(dir=args.dir, hosts=args.hosts, accel=args.accel, accel_per_host=args.accel_per_host,
                       base_port=args.base_port, log_level=args.log_level, lease_ttl=args.lease_ttl,
                       ready_timeout=args.timeout)
    cluster = Cluster(spec)
    try:
        cluster.up(fresh=args.fresh)
    except ProcessFailed as e:
        print(f"ferry-cluster: {e}", file=sys.stderr)
        if e.log_tail:
            print(f"---- last lines of {e.name}'s log ----\n{e.log_tail}\n----", file=sys.stderr)
        print("ferry-cluster: stopped everything that was started", file=sys.stderr)
        return 1
    print(f"cluster up in {cluster.dir}")
    print(f"  region     {cluster.region_address}")
    print(f"  scheduler  {cluster.scheduler_address}")
    print(f"  etcd       {cluster.etcd_address}")
    for h in cluster.hosts:
        print(f"  {h.name:<10} {h.address}  accel={h.accel}  state={h.state_dir}")
    print(f"logs in {cluster.dir / 'logs'}; use: export FERRY_REGION={cluster.region_address}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    cluster = Cluster(ClusterSpec(dir=args.dir, stop_timeout=args.timeout))
    if not cluster.dir.exists():
        print(f"nothing to stop: {cluster.dir} does not exist")
        return 0
    stopped = cluster.down()
    for r in stopped:
        print(f"stopped {r.name} (pid {r.pid})")
    print(f"cluster in {cluster.dir} is down" + ("" if stopped else " (nothing was running)"))
    if args.purge:
        import shutil

        cluster.remove_links()
        shutil.rmtree(cluster.dir)
        print(f"removed {cluster.dir}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    cluster = Cluster.attach(args.dir)
    rows = cluster.status()
    if args.output == "json":
        print(json.dumps({"dir": str(cluster.dir), "region": cluster.region_address, "processes": rows},
                         indent=2))
    else:
        _print_table(rows)
    return 0 if rows and all(r["alive"] for r in rows) else 3


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="ferry-cluster: %(message)s")
    try:
        return {"up": cmd_up, "down": cmd_down, "status": cmd_status}[args.command](args)
    except ComposeError as e:
        print(f"ferry-cluster: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
