"""host-list, host-show, host-enable, host-disable, host-down-incident-list,
host-auto-migrate-on-host-down."""

from __future__ import annotations

import argparse

from ferry_proto.region.v1 import host_service_pb2 as pb

from .context import Context
from .output import total_footer
from .parser import Registry, add_help_flag
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


def _flag(value: str | None) -> bool | None:
    return None if value is None else value == "enable"


def cmd_auto_migrate(ctx: Context, a: argparse.Namespace) -> int:
    host = ctx.client.hosts.set_auto_migrate(
        a.id, on_host_down=_flag(a.auto_migrate_on_host_down),
        on_host_shutdown=_flag(a.auto_migrate_on_host_shutdown))
    if ctx.out.json:
        ctx.out.emit_json(host)
    else:
        ctx.out.kv(host_fields(host))
    return 0


def _set_enabled(enabled: bool):
    def cmd(ctx: Context, a: argparse.Namespace) -> int:
        host = ctx.client.hosts.set_enabled(a.id, enabled)
        if ctx.out.json:
            ctx.out.emit_json(host)
        else:
            ctx.out.kv(host_fields(host))
        return 0
    return cmd


def cmd_incidents(ctx: Context, a: argparse.Namespace) -> int:
    items = ctx.client.hosts.down_incidents(a.host or "", open_only=a.open)
    if ctx.out.json:
        ctx.out.emit_json({"incidents": items})
        return 0
    rows = []
    for i in items:
        state = pb.HostDownIncidentState.Name(i.state).removeprefix("HOST_DOWN_INCIDENT_STATE_")
        moved = sum(1 for s in i.servers if s.action == "rescue")
        rows.append((i.id, i.host_id, state.lower(), i.kind,
                     i.detected_at.ToDatetime().strftime("%Y-%m-%dT%H:%M:%SZ"),
                     f"{moved}/{len(i.servers)}", i.reason))
    ctx.out.table(("ID", "Host", "State", "Kind", "Detected", "Rescued", "Reason"), rows,
                  total_footer(len(rows)))
    return 0


def register(reg: Registry) -> None:
    p = reg.command("host-list", "List hosts", cmd_list)
    p.add_argument("--hypervisor", help="Only hosts of this hypervisor type, e.g. kvm")
    p.add_argument("--search", help="Filter by name substring or exact ID")

    p = reg.command("host-show", "Show details of a host", cmd_show)
    p.add_argument("id", metavar="ID", help="ID or name of host")

    p = reg.command("host-enable", "Enable a host for scheduling", _set_enabled(True))
    p.add_argument("id", metavar="ID", help="ID or name of host")

    p = reg.command("host-disable", "Disable a host for scheduling: it takes no new server "
                    "and no migration; its servers keep running", _set_enabled(False))
    p.add_argument("id", metavar="ID", help="ID or name of host")

    p = reg.command("host-down-incident-list", "List host-down incidents: what the region "
                    "decided when a host's health key vanished, and why", cmd_incidents)
    p.add_argument("--host", metavar="HOST", help="Only this host id or name")
    p.add_argument("--open", action="store_true",
                   help="Only open incidents (waiting, paused, rescuing)")

    # Usage line exactly as the seed: shutdown flag, --help, host-down flag, <ID>.
    p = reg.command("host-auto-migrate-on-host-down",
                    "Set auto migrate on host down or shutdown", cmd_auto_migrate)
    p.add_argument("--auto-migrate-on-host-shutdown", choices=("enable", "disable"),
                   help="Auto migrate guests with shared storage when the host shuts down; "
                        "requires --auto-migrate-on-host-down enable")
    add_help_flag(p)
    p.add_argument("--auto-migrate-on-host-down", choices=("enable", "disable"),
                   help="Auto migrate guests with shared storage when the host goes down")
    p.add_argument("id", metavar="ID", help="ID or name of host")
