"""server-create, server-start, server-stop, server-delete, server-show, server-list."""

from __future__ import annotations

import argparse
from typing import Any

from ferry_proto.region.v1 import resources_pb2

from ..enums import enum_choices, enum_from_str
from ..units import parse_size_mb
from .context import Context
from .parser import Registry, positive_int
from .views import SERVER_COLUMNS, SERVER_DETAIL_COLUMNS, server_fields, server_row
from .output import total_footer
from .waiting import wait_for_task

STORAGES = ("local", "shared")


# -- argument types ---------------------------------------------------------

def size_mb(text: str) -> int:
    try:
        return parse_size_mb(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def data_disk(text: str) -> tuple[int, str]:
    """`SIZE[:local|shared]` -> (MiB, storage or '')."""
    size, _, storage = text.partition(":")
    if storage and storage not in STORAGES:
        raise argparse.ArgumentTypeError(f"invalid storage {storage!r} in {text!r}: choose local or shared")
    return size_mb(size), storage


def server_status(text: str) -> str:
    try:
        enum_from_str(resources_pb2.ServerStatus, text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


# -- shared ending of every mutating command ----------------------------------

def finish(ctx: Context, args: argparse.Namespace, resp: Any, *, deleted: bool = False) -> int:
    """Print the accepted server (table) or response (json); with --wait, follow the task
    first and print the server as it ends up."""
    task = wait_for_task(ctx, resp.task_id) if getattr(args, "wait", False) else None
    server = resp.server
    if task is not None and not deleted:
        server = ctx.client.servers.get(resp.server.id or resp.server.name)
    if ctx.out.json:
        doc: dict[str, Any] = {"server": server, "task_id": resp.task_id}
        if task is not None:
            doc["task"] = task
        ctx.out.emit_json(doc)
    elif task is not None and deleted:
        ctx.out.write(f"Server {resp.server.name or resp.server.id} ({resp.server.id}) deleted")
    else:
        ctx.out.kv(server_fields(server, task_id=resp.task_id))
    return 0


# -- handlers ---------------------------------------------------------------

def cmd_create(ctx: Context, a: argparse.Namespace) -> int:
    resp = ctx.client.servers.create(
        a.name, a.image, vcpu_count=a.ncpu, memory_mb=a.mem, disk_size_mb=a.disk or 0,
        storage=a.storage or "", data_disks=a.data_disk or [], networks=a.net or [],
        prefer_host=a.prefer_host or "", auto_start=a.auto_start, project=a.project or "")
    return finish(ctx, a, resp)


def cmd_start(ctx: Context, a: argparse.Namespace) -> int:
    return finish(ctx, a, ctx.client.servers.start(a.id))


def cmd_stop(ctx: Context, a: argparse.Namespace) -> int:
    return finish(ctx, a, ctx.client.servers.stop(a.id, force=a.force))


def cmd_delete(ctx: Context, a: argparse.Namespace) -> int:
    return finish(ctx, a, ctx.client.servers.delete(a.id), deleted=True)


def cmd_show(ctx: Context, a: argparse.Namespace) -> int:
    server = ctx.client.servers.get(a.id)
    if ctx.out.json:
        ctx.out.emit_json(server)
    else:
        ctx.out.kv(server_fields(server))
    return 0


def cmd_list(ctx: Context, a: argparse.Namespace) -> int:
    resp = ctx.client.servers.list(
        search=a.search or "", details=a.details, scope=a.scope or "", project=a.project or "",
        host=a.host or "", status=a.status or "", page_size=a.limit or 0, page_token=a.page_token or "")
    if ctx.out.json:
        ctx.out.emit_json(resp)
        return 0
    columns = SERVER_COLUMNS + (SERVER_DETAIL_COLUMNS if a.details else ())
    ctx.out.table(columns, [server_row(s, a.details) for s in resp.servers],
                  total_footer(len(resp.servers), resp.total_size, resp.next_page_token))
    return 0


# -- registration -------------------------------------------------------------

def _wait_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wait", action="store_true",
                   help="Wait for the task to end, showing its stages; fail if it fails")


def _id(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", metavar="ID", help="ID or name of server")


def register(reg: Registry) -> None:
    p = reg.command("server-create", "Create a server", cmd_create)
    p.add_argument("--image", required=True, help="ID or name of the image of the system disk")
    p.add_argument("--ncpu", type=positive_int, default=1, help="Number of vCPUs (default 1)")
    p.add_argument("--mem", type=size_mb, default=256,
                   help="Memory size, in MB unless a unit is given, e.g. 512 or 1G (default 256)")
    p.add_argument("--disk", type=size_mb, default=None,
                   help="System disk size, e.g. 512M or 2G (default: the image's virtual size)")
    p.add_argument("--data-disk", type=data_disk, action="append", default=None,
                   help="Blank data disk SIZE[:local|shared], e.g. 1G:shared; repeat for more disks")
    p.add_argument("--storage", choices=STORAGES, default=None,
                   help="Storage of the system disk and of data disks without their own (default local)")
    p.add_argument("--net", action="append", default=None,
                   help="Network name to attach a NIC to; repeat for more NICs")
    p.add_argument("--prefer-host", help="Host id or name to create the server on")
    p.add_argument("--auto-start", action="store_true", help="Start the server after creation")
    p.add_argument("--project", help="Project of the server (default: default)")
    _wait_flag(p)
    p.add_argument("name", metavar="NAME", help="Name of the new server")

    p = reg.command("server-start", "Start a server", cmd_start)
    _wait_flag(p)
    _id(p)

    p = reg.command("server-stop", "Stop a server", cmd_stop)
    p.add_argument("--force", action="store_true", help="Kill the guest at once instead of asking it to quit")
    _wait_flag(p)
    _id(p)

    p = reg.command("server-delete", "Delete a server and its disks", cmd_delete)
    _wait_flag(p)
    _id(p)

    p = reg.command("server-show", "Show details of a server", cmd_show)
    _id(p)

    p = reg.command("server-list", "List servers", cmd_list)
    p.add_argument("--search", help="Filter by name substring or exact ID")
    p.add_argument("--details", action="store_true", help="Show host, disks and networks of each server")
    p.add_argument("--scope", choices=("project", "system"),
                   help="List servers of the project (default) or of every project (system)")
    p.add_argument("--project", help="Project to list in project scope (default: default)")
    p.add_argument("--host", help="Only servers on this host id or name")
    p.add_argument("--status", type=server_status,
                   help="Only servers in this status: " + ", ".join(enum_choices(resources_pb2.ServerStatus)))
    p.add_argument("--limit", type=positive_int, help="Page size, 1-1000 (default 100)")
    p.add_argument("--page-token", help="Token of the page to show, from a previous listing")
