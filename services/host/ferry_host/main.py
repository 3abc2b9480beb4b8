"""`ferry-host`: the host agent process."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ferry_common.server import run_until_signal, setup_logging
from ferry_common.telemetry import setup_tracing
from ferry_common.tls import add_tls_arguments, tls_from_args

from .config import ACCEL_CHOICES, AgentConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ferry-host",
        description="Ferry host agent: runs this host's guests as QEMU processes, reports the "
                    "host's facts to the region and keeps its health key in etcd.")
    p.add_argument("--host-id", required=True, help="stable host id")
    p.add_argument("--name", default=None, help="host name [= host id]")
    p.add_argument("--listen", default="127.0.0.11:7720", help="gRPC bind address [%(default)s]")
    p.add_argument("--data-port", type=int, default=0,
                   help="TCP port of the cold-migration data channel on the listen address; "
                        "0 picks a free one [%(default)s]")
    p.add_argument("--copy-stall-timeout", type=float, default=30.0,
                   help="seconds without data after which a cold disk copy fails [%(default)s]")
    p.add_argument("--advertise", default=None,
                   help="address the region and peers use to reach this agent [= listen]")
    p.add_argument("--region", default="127.0.0.1:7700", help="region address [%(default)s]")
    p.add_argument("--etcd", default="127.0.0.1:2379", help="etcd client endpoint [%(default)s]")
    p.add_argument("--state-dir", required=True, type=Path,
                   help="agent state: guests/<id>/ with spec.json, qmp.sock, serial.log")
    p.add_argument("--local-storage", required=True, type=Path,
                   help="folder for local disks and the local image cache")
    p.add_argument("--shared-storage", type=Path, default=None,
                   help="folder several hosts reach (NFS/CephFS stand-in)")
    p.add_argument("--shared-storage-id", default="shared0",
                   help="id of the shared storage, the same on every host [%(default)s]")
    p.add_argument("--wire", default="wire0", help="L2 wire this host is on [%(default)s]")
    p.add_argument("--networks", default="net0",
                   help="comma-separated networks on the wire [%(default)s]")
    p.add_argument("--accel", choices=ACCEL_CHOICES, default="auto",
                   help="guest accelerator: kvm, tcg, or auto (kvm only if the test guest really "
                        "runs under it) [%(default)s]")
    p.add_argument("--lease-ttl", type=int, default=10,
                   help="etcd health lease TTL in seconds [%(default)s]")
    p.add_argument("--log-level", default="INFO", help="log level [%(default)s]")
    add_tls_arguments(p)
    add_tls_arguments(p, "peer-")
    return p


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    networks = tuple(n.strip() for n in args.networks.split(",") if n.strip())
    return AgentConfig(
        host_id=args.host_id,
        name=args.name or args.host_id,
        state_dir=args.state_dir,
        local_storage=args.local_storage,
        listen=args.listen,
        data_port=args.data_port,
        copy_stall_timeout=args.copy_stall_timeout,
        advertise=args.advertise,
        region=args.region or None,
        etcd=args.etcd or None,
        shared_storage=args.shared_storage,
        shared_storage_id=args.shared_storage_id,
        wire=args.wire,
        networks=networks,
        accel=args.accel,
        lease_ttl=args.lease_ttl,
        tls=tls_from_args(args),
        peer_tls=tls_from_args(args, "peer-"),
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    setup_logging(args.log_level)
    setup_tracing("ferry-host")

    from .app import start_agent

    async def start():
        agent = await start_agent(config)
        return agent.server

    run_until_signal(start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
