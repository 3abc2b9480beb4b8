"""server-serial-log: the tail of a guest's serial console, or follow it."""

from __future__ import annotations

import argparse
import contextlib
import json

from ..errors import DeadlineExceeded
from .context import Context
from .parser import Registry, non_negative_int


def cmd_serial_log(ctx: Context, a: argparse.Namespace) -> int:
    if not a.follow:
        lines = ctx.client.servers.serial_log(a.id, a.tail)
        if ctx.out.json:
            ctx.out.emit_json({"lines": lines})
        elif lines:
            ctx.out.write("\n".join(lines))
        return 0
    stream = ctx.client.servers.follow_serial_log(a.id, a.tail, timeout=ctx.wait_timeout)
    with contextlib.closing(stream):
        try:
            for line in stream:
                ctx.out.write(json.dumps({"line": line}) if ctx.out.json else line)
        except KeyboardInterrupt:
            return 0  # Ctrl-C is how a follow ends
        except DeadlineExceeded:
            if ctx.wait_timeout is None:
                raise
            return 0  # --timeout bounds how long to follow
    return 0


def register(reg: Registry) -> None:
    p = reg.command("server-serial-log", "Show the serial console log of a server", cmd_serial_log)
    p.add_argument("--tail", type=non_negative_int, default=100,
                   help="Number of trailing lines to show (default 100)")
    p.add_argument("--follow", action="store_true",
                   help="Keep printing new lines as the guest writes them, until Ctrl-C")
    p.add_argument("id", metavar="ID", help="ID or name of server")
