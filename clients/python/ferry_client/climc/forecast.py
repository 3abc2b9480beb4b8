"""climc commands: server-migrate-forecast (issue 3)."""

from __future__ import annotations

import argparse

from .context import Context
from .parser import Registry


def cmd_forecast(ctx: Context, a: argparse.Namespace) -> int:
    resp = ctx.client.migrations.forecast(
        a.id, live=a.live, rescue_mode=a.rescue_mode, prefer_host=a.prefer_host or "",
        skip_cpu_check=a.skip_cpu_check, skip_kernel_check=a.skip_kernel_check)
    if ctx.out.json:
        ctx.out.emit_json(resp)
        return 0
    kind = "live migration" if a.live else "rescue" if a.rescue_mode else "migration"
    verdict = "can be placed" if resp.can_place else "cannot be placed"
    ctx.out.write(f"Server {a.id} {verdict} ({kind}): {len(resp.candidates)} candidate host(s), "
                  f"{len(resp.rejected)} rejected")
    if resp.candidates:
        ctx.out.table(("Rank", "Host_id", "Name", "Score"),
                      [(i, c.host_id, c.host_name, f"{c.score:.2f}")
                       for i, c in enumerate(resp.candidates, 1)])
    if resp.rejected:
        rows = []
        for rh in resp.rejected:
            for j, x in enumerate(rh.rejections):
                first = j == 0
                rows.append((rh.host_id if first else "", rh.host_name if first else "",
                             x.filter, x.reason, x.message))
        ctx.out.write("Rejected hosts:")
        ctx.out.table(("Host_id", "Name", "Filter", "Reason", "Message"), rows)
    return 0


def register(reg: Registry) -> None:
    """Adds this group's commands to climc."""
    p = reg.command("server-migrate-forecast",
                    "Forecast where a server could be migrated and why other hosts cannot take it",
                    cmd_forecast)
    p.add_argument("--live", action="store_true",
                   help="Forecast a live migration (same CPU model, microcode and kernel)")
    p.add_argument("--rescue-mode", action="store_true",
                   help="Forecast a rescue off a down host (every disk on shared storage)")
    p.add_argument("--skip-cpu-check", action="store_true",
                   help="Live: accept a different CPU model or microcode")
    p.add_argument("--skip-kernel-check", action="store_true",
                   help="Live: accept a different kernel version")
    p.add_argument("--prefer-host", metavar="PREFER_HOST",
                   help="Only consider this host (ID or name); every filter still applies")
    p.add_argument("id", metavar="ID", help="ID or name of server")
