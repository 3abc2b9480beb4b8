"""host-list, host-show."""

from __future__ import annotations

import argparse

from .context import Context
from .output import total_footer
from .parser import Registry
from .views import HOST_COLUMNS, host_fields, host_row


def cmd_list(ctx: Context, a: argparse.Namespace) -> int:
    hosts = ctx.client.hosts.list(hypervisor=a.hypervisor or "", search=a.search or "")
    if ctx.out.json:
        ctx.out.emit_json({"hosts": hosts})
    else:
        ctx.out.table(HOST_COLUMNS, [host_row(h) for h in hosts], total_footer(len(hosts)))
    return 0


def cmd_show(ctx: Context, a: argparse.Namespace) -> int:
    host = ctx.client.hosts.get(a.id)
    if ctx.out.json:
        ctx.out.emit_json(host)
    else:
        ctx.out.kv(host_fields(host))
    return 0


def register(reg: Registry) -> None:
    p = reg.command("host-list", "List hosts", cmd_list)
    p.add_argument("--hypervisor", help="Only hosts of this hypervisor type, e.g. kvm")
    p.add_argument("--search", help="Filter by name substring or exact ID")

    p = reg.command("host-show", "Show details of a host", cmd_show)
    p.add_argument("id", metavar="ID", help="ID or name of host")
