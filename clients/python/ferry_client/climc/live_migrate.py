"""climc commands: server-live-migrate, server-cancel-live-migrate, server-set-live-migrate-params (issue 4)."""

from __future__ import annotations

import argparse
import sys

from .context import Context
from .parser import Registry, add_help_flag, non_negative_int, positive_int
from .views import progress_line, server_fields


def follow(ctx: Context, ident: str, task_id: str) -> int:
    """Shows a live progress line until the task ends; then downtime and total time."""
    tty = sys.stdout.isatty() and not ctx.out.json
    last_line = ""
    final = None
    for msg in ctx.client.migrations.watch_progress(ident, timeout=ctx.wait_timeout):
        final = msg
        if msg.server.HasField("progress"):
            line = progress_line(msg.server.progress)
            if line != last_line:
                if tty:
                    sys.stdout.write("\r\033[K" + line)
                    sys.stdout.flush()
                else:
                    ctx.out.note(line)
                last_line = line
        if msg.done:
            break
    if tty:
        sys.stdout.write("\n")
    # The task decides success (TaskFailed carries its reason to main).
    ctx.client.wait_task(task_id, timeout=ctx.wait_timeout)
    server = ctx.client.servers.get(ident)
    if ctx.out.json:
        ctx.out.emit_json({"server": server, "task_id": task_id,
                           "downtime_ms": final.downtime_ms if final else 0,
                           "total_ms": final.total_ms if final else 0})
        return 0
    ctx.out.kv(server_fields(server, task_id=task_id))
    if final is not None:
        ctx.out.write(f"Live migration done: downtime {final.downtime_ms} ms, "
                      f"total time {final.total_ms / 1000:.2f} s")
    return 0


def cmd_live_migrate(ctx: Context, a: argparse.Namespace) -> int:
    resp = ctx.client.migrations.live_migrate(
        a.id, prefer_host=a.prefer_host or "", skip_cpu_check=a.skip_cpu_check,
        skip_kernel_check=a.skip_kernel_check, enable_tls=a.enable_tls,
        quickly_finish=a.quickly_finish, max_bandwidth_mb=a.max_bandwidth_mb or 0,
        keep_dest_guest_on_failed=a.keep_dest_guest_on_failed)
    if a.wait:
        return follow(ctx, resp.server.id or a.id, resp.task_id)
    if ctx.out.json:
        ctx.out.emit_json({"server": resp.server, "task_id": resp.task_id})
    else:
        ctx.out.kv(server_fields(resp.server, task_id=resp.task_id))
    return 0


def cmd_cancel(ctx: Context, a: argparse.Namespace) -> int:
    resp = ctx.client.migrations.cancel_live_migrate(a.id)
    if ctx.out.json:
        ctx.out.emit_json({"server": resp.server, "task_id": resp.task_id})
    else:
        ctx.out.write(f"Cancelling live migration task {resp.task_id} of server "
                      f"{resp.server.name or a.id}; it keeps running on its source host")
    return 0


def cmd_set_params(ctx: Context, a: argparse.Namespace) -> int:
    resp = ctx.client.migrations.set_live_migrate_params(
        a.id, max_bandwidth_mb=a.max_bandwidth_mb, downtime_limit_ms=a.downtime_ms)
    if ctx.out.json:
        ctx.out.emit_json(resp.server)
    else:
        ctx.out.kv(server_fields(resp.server))
    return 0


def register(reg: Registry) -> None:
    """Adds this group's commands to climc."""
    p = reg.command("server-live-migrate", "Live-Migrate server", cmd_live_migrate)
    p.add_argument("--skip-cpu-check", action="store_true",
                   help="Skip check CPU mode of the target host")
    p.add_argument("--skip-kernel-check", action="store_true",
                   help="Skip target kernel version check")
    p.add_argument("--enable-tls", action="store_true", help="Enable tls migration")
    p.add_argument("--quickly-finish", action="store_true",
                   help="quickly finish, fix downtime after a few rounds of memory synchronization")
    p.add_argument("--max-bandwidth-mb", type=non_negative_int, metavar="MAX_BANDWIDTH_MB",
                   help="live migrate downtime, unit MB")
    p.add_argument("--keep-dest-guest-on-failed", action="store_true",
                   help="do not delete dest guest on migrate failed, for debug")
    add_help_flag(p)
    p.add_argument("--prefer-host", metavar="PREFER_HOST",
                   help="Server migration prefer host id or name")
    # Not in the seed's usage line: follow the progress, then print downtime and total time.
    p.add_argument("--wait", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("id", metavar="ID", help="ID of server")

    p = reg.command("server-cancel-live-migrate", "Cancel a live migration; the server keeps "
                    "running on its source host", cmd_cancel)
    p.add_argument("id", metavar="ID", help="ID of server")

    p = reg.command("server-set-live-migrate-params",
                    "Change the bandwidth cap or downtime limit of a running live migration",
                    cmd_set_params)
    p.add_argument("--max-bandwidth-mb", type=non_negative_int, metavar="N", default=None,
                   help="Bandwidth cap in MB/s, 0 for unlimited")
    p.add_argument("--downtime-ms", type=positive_int, metavar="N", default=None,
                   help="Downtime limit in milliseconds")
    p.add_argument("id", metavar="ID", help="ID of server")
