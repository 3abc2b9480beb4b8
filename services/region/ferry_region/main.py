"""`ferry-region`: the region controller process.

Flags (defaults in brackets), as in docs/ARCHITECTURE.md:
--listen [127.0.0.1:7700] --db-url [sqlite:///<data-dir>/region.db] --data-dir [./var/region]
--scheduler [127.0.0.1:7710] --etcd [127.0.0.1:2379] --advertise [= listen] --log-level [INFO]
--tls-ca/--tls-cert/--tls-key (server) and --peer-tls-ca/--peer-tls-cert/--peer-tls-key
(client to the scheduler and host agents). `--etcd ""` disables the health watcher.
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

from ferry_common.server import run_until_signal, setup_logging
from ferry_common.telemetry import setup_tracing
from ferry_common.tls import add_tls_arguments, tls_from_args

from .config import HostDownConfig, RegionConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ferry-region", description="Ferry region controller")
    p.add_argument("--listen", default="127.0.0.1:7700", help="host:port to serve on")
    p.add_argument("--db-url", default=None,
                   help="SQLAlchemy URL [sqlite:///<data-dir>/region.db]; PostgreSQL: "
                        "postgresql+psycopg2://user@host:port/db")
    p.add_argument("--data-dir", type=Path, default=Path("./var/region"),
                   help="folder for the SQLite database and the images [./var/region]")
    p.add_argument("--scheduler", default="127.0.0.1:7710", help="scheduler host:port")
    p.add_argument("--etcd", default="127.0.0.1:2379",
                   help="etcd host:port for host health; empty disables it")
    p.add_argument("--advertise", default=None,
                   help="address agents use to reach the region [= listen]")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    p.add_argument("--refresh-interval", type=int, default=30,
                   help="seconds between agent registrations [30]")
    p.add_argument("--host-down-window", type=float, default=10.0,
                   help="seconds a vanished host may come back before it is rescued [10]")
    p.add_argument("--host-down-max-share", type=float, default=0.5,
                   help="share of hosts expiring at once that pauses auto-rescue [0.5]")
    p.add_argument("--host-down-max-in-flight", type=int, default=4,
                   help="rescues in flight at once [4]")
    p.add_argument("--no-host-down", action="store_true",
                   help="do not act on host-down (health status only)")
    p.add_argument("--live-downtime-cap-ms", type=int, default=1000,
                   help="hard cap of the downtime limit that --quickly-finish may raise to")
    p.add_argument("--live-stall-timeout", type=int, default=60,
                   help="abort a live migration after this many seconds without progress")
    add_tls_arguments(p)
    add_tls_arguments(p, prefix="peer-")
    return p


def config_from_args(args: argparse.Namespace) -> RegionConfig:
    if not 100 <= args.live_downtime_cap_ms <= 60_000:
        raise SystemExit("ferry-region: --live-downtime-cap-ms must be between 100 and 60000")
    if not 5 <= args.live_stall_timeout <= 3600:
        raise SystemExit("ferry-region: --live-stall-timeout must be between 5 and 3600 seconds")
    peer = tls_from_args(args, prefix="peer-")
    server_tls = tls_from_args(args)
    return RegionConfig(listen=args.listen, data_dir=args.data_dir, db_url=args.db_url,
                        scheduler=args.scheduler, etcd=args.etcd, advertise=args.advertise,
                        log_level=args.log_level, refresh_interval=args.refresh_interval,
                        tls=server_tls if server_tls.enabled else None,
                        peer_tls=peer if peer.enabled else None,
                        live_downtime_cap_ms=args.live_downtime_cap_ms,
                        live_stall_timeout_s=args.live_stall_timeout,
                        hostdown=HostDownConfig(
                            enabled=not args.no_host_down, window=args.host_down_window,
                            max_expired_share=args.host_down_max_share,
                            max_in_flight=args.host_down_max_in_flight))


def tune_gc(threshold: int = 50_000) -> None:
    """Fewer, cheaper garbage collections: a page of 100 servers allocates thousands
    of ORM objects, and with the default threshold (700) the collector ran in the
    middle of requests and tripled the p99 of ListServers. Objects alive after
    start-up (modules, mappers, compiled statements) are frozen out of collection."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(threshold, 20, 20)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    setup_tracing("ferry-region")
    config = config_from_args(args)

    async def start():
        from .app import start_region
        region = await start_region(config)
        tune_gc()
        return region.server

    run_until_signal(start)


if __name__ == "__main__":
    main(sys.argv[1:])
