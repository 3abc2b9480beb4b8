"""task-list, task-show."""

from __future__ import annotations

import argparse

from .context import Context
from .output import total_footer
from .parser import Registry, positive_int
from .views import TASK_COLUMNS, task_fields, task_row


def cmd_list(ctx: Context, a: argparse.Namespace) -> int:
    tasks = ctx.client.tasks.list(server=a.server or "", state=a.state or "", limit=a.limit or 0)
    if ctx.out.json:
        ctx.out.emit_json({"tasks": tasks})
    else:
        ctx.out.table(TASK_COLUMNS, [task_row(t) for t in tasks], total_footer(len(tasks)))
    return 0


def cmd_show(ctx: Context, a: argparse.Namespace) -> int:
    task = ctx.client.tasks.get(a.id)
    if ctx.out.json:
        ctx.out.emit_json(task)
    else:
        ctx.out.kv(task_fields(task))
    return 0


def register(reg: Registry) -> None:
    p = reg.command("task-list", "List tasks, newest first", cmd_list)
    p.add_argument("--server", help="Only tasks of this server id or name")
    p.add_argument("--state", choices=("running", "succeeded", "failed", "rolling_back"),
                   help="Only tasks in this state")
    p.add_argument("--limit", type=positive_int, help="At most this many tasks, 1-1000 (default 50)")

    p = reg.command("task-show", "Show details of a task", cmd_show)
    p.add_argument("id", metavar="ID", help="ID of task")
