"""climc entry point: parse, run one command, map every failure to a line and an exit code.

Exit codes: 0 success, 1 a failed request or task (one line on stderr:
`climc: error: <CODE>: <message>`, then one line per host the scheduler rejected),
2 a usage error, 130 interrupted. No traceback reaches the user unless
FERRY_DEBUG is set.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence
from typing import TextIO

from ..errors import ClientError, RegionUnreachable, describe
from . import forecast, hosts, images, live_migrate, migrate, serial, servers, tasks
from .context import Context
from .parser import ClimcParser, Registry, add_global_options, add_help_flag
from .waiting import WaitInterrupted

# Each module registers its commands; later groups (migrations, host settings) join this list.
COMMAND_MODULES = (images, servers, serial, hosts, tasks, migrate, live_migrate, forecast)

DESCRIPTION = "Ferry command-line client: manage and migrate KVM virtual machines."
EPILOG = 'Run "climc <SUBCOMMAND> --help" or "climc help <SUBCOMMAND>" for the arguments of a command.'


def build_parser() -> ClimcParser:
    parser = ClimcParser(prog="climc", description=DESCRIPTION, epilog=EPILOG)
    add_global_options(parser)
    add_help_flag(parser)
    sub = parser.add_subparsers(dest="command", metavar="<SUBCOMMAND>", parser_class=ClimcParser)
    sub.required = True
    reg = Registry(sub)
    for module in COMMAND_MODULES:
        module.register(reg)
    h = reg.command("help", "Show the help of a command", _cmd_help)
    h.add_argument("topic", metavar="SUBCOMMAND", nargs="?", help="Command to describe")
    h.set_defaults(parser=parser, registry=reg)
    reg.finalize()
    return parser


def _cmd_help(ctx: Context, a) -> int:  # type: ignore[no-untyped-def]
    target = a.registry.parsers.get(a.topic) if a.topic else a.parser
    if target is None:
        ctx.out.stderr.write(f"climc: error: unknown command {a.topic!r}\n")
        return 2
    ctx.out.write(target.format_help())
    return 0


def _print_error(stderr: TextIO, err: BaseException) -> None:
    lines = describe(err)
    if isinstance(err, RegionUnreachable):
        lines[0] += " (set --region or FERRY_REGION)"
    stderr.write(f"climc: error: {lines[0]}\n")
    for line in lines[1:]:
        stderr.write(f"{line}\n")
    stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    stdout, stderr = sys.stdout, sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    ctx = Context(args, stdout, stderr)
    try:
        return int(args.handler(ctx, args) or 0)
    except ClientError as exc:
        _print_error(stderr, exc)
        return 1
    except WaitInterrupted as exc:
        stderr.write(f"climc: interrupted; task {exc.task_id} goes on (climc task-show {exc.task_id})\n")
        return 130
    except KeyboardInterrupt:
        stderr.write("climc: interrupted\n")
        return 130
    except BrokenPipeError:
        try:  # stdout closed by `| head`: stop quietly
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stdout.fileno())
        except (OSError, ValueError):
            pass
        return 1
    except OSError as exc:  # e.g. image-create --file that cannot be read
        where = f": {exc.filename}" if exc.filename else ""
        stderr.write(f"climc: error: {exc.strerror or exc}{where}\n")
        return 1
    except Exception as exc:  # noqa: BLE001 - a bug must still not print a traceback
        if os.environ.get("FERRY_DEBUG"):
            traceback.print_exc(file=stderr)
        stderr.write(f"climc: error: internal error: {type(exc).__name__}: {exc} "
                     "(set FERRY_DEBUG=1 for a traceback)\n")
        return 1
    finally:
        ctx.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
