"""`ferry-scheduler`: the placement service."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from ferry_common.server import run_until_signal, setup_logging
from ferry_common.telemetry import setup_tracing
from ferry_common.tls import add_tls_arguments, tls_from_args

from .app import SchedulerConfig, start_scheduler


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ferry-scheduler",
                                description="Ferry scheduler: chooses hosts for servers.")
    p.add_argument("--listen", default="127.0.0.1:7710", help="gRPC address to serve on")
    p.add_argument("--region", default="127.0.0.1:7700",
                   help="region address whose HostService.WatchHosts feeds the host cache")
    p.add_argument("--reservation-ttl", type=float, default=60.0,
                   help="seconds an unconfirmed reservation lives when the request says 0")
    p.add_argument("--confirmed-grace", type=float, default=120.0,
                   help="seconds a confirmed reservation stays counted at most, waiting for the "
                        "region's host usage to include it")
    p.add_argument("--log-level", default="INFO")
    add_tls_arguments(p)
    add_tls_arguments(p, prefix="peer-")
    return p


def config_from_args(args: argparse.Namespace) -> SchedulerConfig:
    return SchedulerConfig(listen=args.listen, region=args.region,
                           tls=tls_from_args(args), peer_tls=tls_from_args(args, "peer-"),
                           reservation_ttl=args.reservation_ttl,
                           confirmed_grace=args.confirmed_grace)


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    setup_tracing("ferry-scheduler")
    config = config_from_args(args)
    run_until_signal(lambda: start_scheduler(config))  # type: ignore[arg-type,return-value]


if __name__ == "__main__":
    main()
