"""`ferry-host-health`: the host's health keeper process (see `keeper`)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from ferry_common.server import setup_logging
from ferry_common.tls import add_tls_arguments, tls_from_args

from .keeper import HealthKeeper, KeeperConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ferry-host-health",
        description="Keeps this host's etcd health key alive under a lease, independently of the "
                    "host agent, and fences the host's shared-storage guests when it cannot. "
                    "SIGTERM: the host shuts down (shared guests stopped, shutdown announced, "
                    "lease revoked); SIGUSR1: exit leaving the lease (keeper upgrade).")
    p.add_argument("--host-id", required=True, help="host id (the agent's --host-id)")
    p.add_argument("--etcd", default="127.0.0.1:2379", help="etcd client endpoint [%(default)s]")
    p.add_argument("--state-dir", required=True, type=Path, help="the agent's --state-dir")
    p.add_argument("--agent-address", default="", help="the agent's address, put in the key's value")
    p.add_argument("--shared-storage", type=Path, default=None, help="the agent's --shared-storage")
    p.add_argument("--shared-storage-id", default="shared0", help="[%(default)s]")
    p.add_argument("--lease-ttl", type=int, default=10, help="lease TTL in seconds [%(default)s]")
    p.add_argument("--fence-after", type=float, default=None,
                   help="seconds without renewal before fencing, < TTL [0.6 x TTL]")
    p.add_argument("--region", default="",
                   help="comma-separated region address(es); when every one answers that it does "
                        "not see etcd either, an overdue keeper holds off fencing [none: always fence]")
    add_tls_arguments(p, "region-")
    p.add_argument("--log-level", default="INFO", help="log level [%(default)s]")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = KeeperConfig(host_id=args.host_id, etcd=args.etcd, state_dir=args.state_dir,
                              agent_address=args.agent_address,
                              shared_storage=args.shared_storage,
                              shared_storage_id=args.shared_storage_id,
                              lease_ttl=args.lease_ttl, fence_after=args.fence_after,
                              regions=tuple(a.strip() for a in args.region.split(",") if a.strip()),
                              region_tls=tls_from_args(args, "region-"))
    except ValueError as exc:
        parser.error(str(exc))
    setup_logging(args.log_level)

    async def run() -> None:
        keeper = HealthKeeper(config)
        stop = asyncio.Event()
        how: list[str] = []
        loop = asyncio.get_running_loop()

        def on_signal(what: str) -> None:
            how.append(what)
            stop.set()

        # SIGTERM/SIGINT: the host is being shut down. SIGUSR1: the keeper alone is being
        # replaced (an upgrade): exit without touching the lease; the next keeper re-puts
        # the key within the TTL, so nobody sees the host go.
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, "shutdown")
        loop.add_signal_handler(signal.SIGUSR1, on_signal, "upgrade")
        await keeper.start()
        try:
            await stop.wait()
        finally:
            if how and how[0] == "shutdown":
                await keeper.shutdown()
            else:
                await keeper.stop(revoke=False)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
