#!/usr/bin/env python3
"""`make demo`: a 3-host Ferry cluster on this machine, migrating real test VMs.

Starts etcd, region, scheduler and 3 host agents (ferry-cluster), uploads the
test guest image, creates three servers that start at once, shows the hosts, the
servers and the serial console's heartbeats, live-migrates one (its heartbeat
goes on), cold-migrates another, and leaves the cluster running.
Every step is a `climc` command, printed before it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def run(argv: list[str], env: dict[str, str], check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess:
    shown = " ".join(shlex.quote(a) for a in [Path(argv[0]).name, *argv[1:]])
    print(f"$ {shown}", flush=True)
    proc = subprocess.run(argv, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, text=True,
                          capture_output=quiet, timeout=300)
    if check and proc.returncode != 0:
        if quiet:
            sys.stderr.write(proc.stdout + proc.stderr)
        raise SystemExit(f"demo: `{shown}` failed with exit code {proc.returncode}")
    return proc


def heartbeat_seen(climc: str, env: dict[str, str], server: str, timeout: float = 60.0) -> bool:
    """Polls the serial log until the guest printed a heartbeat line (deadline, no sleep-and-hope)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = subprocess.run([climc, "server-serial-log", "--tail", "5", server], env=env, cwd=ROOT,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
        if proc.returncode == 0 and "FERRY-HB" in proc.stdout:
            return True
        time.sleep(0.5)
    return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=".cluster", help="cluster folder (default: .cluster)")
    ap.add_argument("--image", default="var/testguest.img", help="test guest image to upload")
    ap.add_argument("--hosts", type=int, default=3)
    ap.add_argument("--servers", type=int, default=3)
    ap.add_argument("--accel", default=os.environ.get("FERRY_DEMO_ACCEL", "tcg"),
                    help="accelerator of the hosts: tcg (default), kvm or auto")
    args = ap.parse_args()

    cluster_cli = str(BIN / "ferry-cluster")
    climc = str(BIN / "climc")
    env = dict(os.environ)

    banner("Stopping any previous demo cluster")
    run([cluster_cli, "down", "--dir", args.dir], env, quiet=True)

    banner(f"Starting etcd, region, scheduler and {args.hosts} host agents")
    run([cluster_cli, "up", "--dir", args.dir, "--hosts", str(args.hosts), "--accel", args.accel, "--fresh"], env)
    state = json.loads((ROOT / args.dir / "cluster.json").read_text())
    region = state["plan"]["region"]
    env["FERRY_REGION"] = region

    banner("Uploading the test guest image (a 1 MiB boot sector guest built from source)")
    run([climc, "image-create", "--file", args.image, "testguest"], env)

    names = [f"demo-{i}" for i in range(1, args.servers + 1)]
    banner(f"Creating {len(names)} servers; the scheduler picks their hosts")
    for name in names:
        proc = run([climc, "server-create", "--image", "testguest", "--mem", "64", "--net", "net0",
                    "--auto-start", "--wait", "--output", "json", name], env, quiet=True)
        try:
            server = json.loads(proc.stdout)
            server = server.get("server", server)
            status = str(server.get("status", "")).removeprefix("SERVER_STATUS_").lower()
            print(f"   {name}: {status} on {server.get('host_name') or server.get('host_id')}")
        except ValueError:
            print(proc.stdout)

    banner("Hosts")
    run([climc, "host-list"], env)
    banner("Servers")
    run([climc, "server-list", "--details", "--scope", "system"], env)

    banner(f"Serial console of {names[0]}: the guest's heartbeat counter")
    if not heartbeat_seen(climc, env, names[0]):
        print(f"demo: no heartbeat from {names[0]} within 60 s; see {args.dir}/hosts/*/state/guests/*/serial.log")
    run([climc, "server-serial-log", "--tail", "5", names[0]], env, check=False)

    banner(f"Where could {names[0]} go live? The forecast names every host and why")
    run([climc, "server-migrate-forecast", "--live", names[0]], env, check=False)

    banner(f"Live migration of {names[0]}: it keeps running, the heartbeat goes on")
    run([climc, "server-live-migrate", "--wait", names[0]], env)
    run([climc, "server-show", names[0]], env)
    if not heartbeat_seen(climc, env, names[0]):
        print(f"demo: no heartbeat from {names[0]} after the migration")
    run([climc, "server-serial-log", "--tail", "3", names[0]], env, check=False)

    banner(f"Cold migration of {names[1]}: stopped, its disks copied host to host, started again")
    run([climc, "server-stop", "--wait", names[1]], env)
    run([climc, "server-migrate", "--auto-start", "--wait", names[1]], env)
    run([climc, "server-list", "--details", "--scope", "system"], env)

    banner("The cluster keeps running")
    print(f"""Use it with climc (the region listens on {region}):

    export FERRY_REGION={region}
    export PATH="$PWD/.venv/bin:$PATH"
    climc host-list --hypervisor kvm
    climc server-list --details --scope system
    climc server-serial-log --follow {names[0]}
    climc server-live-migrate --wait {names[2]}
    climc server-stop --wait {names[2]} && climc server-migrate --wait {names[2]}
    climc task-list

Processes and logs: .venv/bin/ferry-cluster status --dir {args.dir}   ({args.dir}/logs/*.log)
Stop everything (agents, guests, scheduler, region, etcd): make down""")
    return 0


if __name__ == "__main__":
    sys.exit(main())
