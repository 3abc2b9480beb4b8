"""climc commands: server-migrate, servers-migrate (issue 5)."""

from __future__ import annotations

import argparse
import threading
from typing import Any

from ..errors import ClientError
from .context import Context
from .parser import Registry, add_help_flag, non_negative_int, positive_int
from .servers import finish


def _progress_line(server: Any) -> str | None:
    p = server.progress
    if not p.disk_bytes_total and not p.phase:
        return None
    mib = 1024 * 1024
    eta = f", ETA {p.eta_seconds}s" if p.eta_seconds >= 0 else ""
    resumed = f", {p.resumed_bytes / mib:.1f} MiB resumed" if p.resumed_bytes else ""
    return (f"Progress: {p.phase or 'copy'} {p.percent:.1f}% "
            f"({p.disk_bytes_done / mib:.1f}/{p.disk_bytes_total / mib:.1f} MiB, "
            f"{p.throughput_mbps / 8:.1f} MB/s{eta}{resumed})")


def _follow_progress(ctx: Context, server_id: str, stop: threading.Event) -> None:
    last = None
    while not stop.wait(1.0):
        try:
            line = _progress_line(ctx.client.servers.get(server_id))
        except ClientError:
            continue
        if line and line != last:
            ctx.out.note(line)
            last = line


def cmd_migrate(ctx: Context, a: argparse.Namespace) -> int:
    resp = ctx.client.migrations.migrate(a.id, auto_start=a.auto_start, rescue_mode=a.rescue_mode,
                                         prefer_host=a.prefer_host or "",
                                         max_bandwidth_mb=a.max_bandwidth_mb or 0)
    if not a.wait:
        return finish(ctx, a, resp)
    stop = threading.Event()
    t = threading.Thread(target=_follow_progress, args=(ctx, resp.server.id, stop), daemon=True)
    t.start()
    try:
        return finish(ctx, a, resp)
    finally:
        stop.set()
        t.join(timeout=2)


def cmd_migrate_many(ctx: Context, a: argparse.Namespace) -> int:
    resp = ctx.client.migrations.migrate_many(
        a.ids or [], source_host=a.source_host or "", prefer_host=a.prefer_host or "",
        auto_start=a.auto_start, max_in_flight_per_host=a.max_in_flight or 0)
    failed = 0
    if a.wait:
        for r in resp.results:
            if not r.task_id:
                continue
            try:
                ctx.client.wait_task(r.task_id, timeout=ctx.wait_timeout)
            except ClientError as exc:
                r.error, r.error_reason = str(exc), getattr(exc, "reason", "") or "FAILED"
    if ctx.out.json:
        ctx.out.emit_json(resp)
    rows = []
    for r in resp.results:
        ok = not r.error
        failed += not ok
        rows.append((r.server_name or r.server_id, r.server_id, r.task_id or "-",
                     "ok" if ok else f"{r.error_reason}: {r.error}"))
    if not ctx.out.json:
        ctx.out.table(("Name", "ID", "Task", "Result"), rows, f"*** Total: {len(rows)} ***")
    return 1 if failed else 0


def cmd_cancel(ctx: Context, a: argparse.Namespace) -> int:
    resp = ctx.client.migrations.cancel_migrate(a.id)
    if ctx.out.json:
        ctx.out.emit_json({"server": resp.server, "task_id": resp.task_id})
    else:
        ctx.out.write(f"Cancelling migration task {resp.task_id} of server "
                      f"{resp.server.name or a.id}; it stays on its source host, and a retry "
                      "resumes from what was copied")
    return 0


def cmd_set_params(ctx: Context, a: argparse.Namespace) -> int:
    resp = ctx.client.migrations.set_migrate_params(a.id, max_bandwidth_mb=a.max_bandwidth_mb)
    if ctx.out.json:
        ctx.out.emit_json({"server": resp.server, "task_id": resp.task_id})
    else:
        cap = f"{a.max_bandwidth_mb} MB/s" if a.max_bandwidth_mb else "unlimited"
        ctx.out.write(f"Bandwidth cap of the copy of server {resp.server.name or a.id} set to "
                      f"{cap}")
    return 0


def register(reg: Registry) -> None:
    """Adds this group's commands to climc."""
    p = reg.command("server-migrate", "Migrate server", cmd_migrate)
    p.add_argument("--auto-start", action="store_true", help="Server auto start after migrate")
    p.add_argument("--rescue-mode", action="store_true",
                   help="Migrate server in rescue mode, all disks must reside on shared storage")
    p.add_argument("--prefer-host", metavar="PREFER_HOST",
                   help="Server migration prefer host id or name")
    # Ferry additions, kept out of the seed's usage line.
    p.add_argument("--max-bandwidth-mb", type=non_negative_int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--wait", action="store_true", help=argparse.SUPPRESS)
    add_help_flag(p, hidden=True)
    p.add_argument("id", metavar="ID", help="ID of server")

    p = reg.command("server-cancel-migrate", "Cancel a cold migration before the server switches "
                    "to its target host; it stays on its source host", cmd_cancel)
    p.add_argument("id", metavar="ID", help="ID of server")

    p = reg.command("server-set-migrate-params", "Change the bandwidth cap of a cold migration "
                    "while its disks copy", cmd_set_params)
    p.add_argument("--max-bandwidth-mb", metavar="MB", type=non_negative_int, required=True,
                   help="New cap in MB/s for the whole server, 0 for unlimited")
    p.add_argument("id", metavar="ID", help="ID of server")

    p = reg.command("servers-migrate", "Cold-migrate several servers, or every stopped server "
                    "off a host, a bounded number at a time", cmd_migrate_many)
    p.add_argument("--source-host", metavar="SOURCE_HOST",
                   help="Move every stopped server off this host id or name")
    p.add_argument("--prefer-host", metavar="PREFER_HOST", help="Target host id or name")
    p.add_argument("--max-in-flight", metavar="N", type=positive_int, default=0,
                   help="At most N migrations per source and per target host (default 2)")
    p.add_argument("--auto-start", action="store_true", help="Start each server after its migration")
    p.add_argument("--wait", action="store_true", help="Wait for every migration and report its result")
    p.add_argument("ids", metavar="ID", nargs="*", help="IDs or names of servers")
