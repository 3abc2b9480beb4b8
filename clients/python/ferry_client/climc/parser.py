"""Argument parsing with Cloudpods-style help, and the registry of subcommands.

Help looks like the seed's:

    Usage: climc server-migrate [--auto-start] [--prefer-host PREFER_HOST] <ID>

    Migrate server

    Positional arguments:
        <ID>
            ID of server

    Optional arguments:
        [--auto-start]
            Server auto start after migrate
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

HELP_TEXT = "Print usage and this help message and exit."
INDENT = "    "

Handler = Callable[[Any, argparse.Namespace], int | None]


def _visible(action: argparse.Action) -> bool:
    return action.help is not argparse.SUPPRESS


def _long_option(action: argparse.Action) -> str:
    return max(action.option_strings, key=len)


def _metavar(action: argparse.Action) -> str:
    if isinstance(action.metavar, str):
        return action.metavar
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        return "{" + ",".join(str(c) for c in action.choices) + "}"
    return action.dest.upper()


def _option_token(action: argparse.Action) -> str:
    opt = _long_option(action)
    if action.nargs == 0:
        token = opt
    else:
        token = f"{opt} {_metavar(action)}"
    return token if action.required else f"[{token}]"


def _positional_token(action: argparse.Action) -> str:
    if isinstance(action, argparse._SubParsersAction):
        return "<SUBCOMMAND> ..."
    name = _metavar(action)
    token = name if name.startswith("<") else f"<{name}>"
    if action.nargs in ("?", "*"):
        return f"[{token}]"
    return token


class ClimcParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage and help follow Cloudpods' climc."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("add_help", False)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def _visible_actions(self) -> tuple[list[argparse.Action], list[argparse.Action]]:
        optionals = [a for a in self._actions if a.option_strings and _visible(a)]
        positionals = [a for a in self._actions if not a.option_strings and _visible(a)]
        return optionals, positionals

    def usage_line(self) -> str:
        optionals, positionals = self._visible_actions()
        parts = [self.prog]
        parts += [_option_token(a) for a in optionals]
        parts += [_positional_token(a) for a in positionals]
        return " ".join(parts)

    def format_usage(self) -> str:
        return f"Usage: {self.usage_line()}\n"

    def format_help(self) -> str:
        optionals, positionals = self._visible_actions()
        out = [self.format_usage()]
        if self.description:
            out.append(f"{self.description}\n")
        subparsers = [a for a in positionals if isinstance(a, argparse._SubParsersAction)]
        plain = [a for a in positionals if not isinstance(a, argparse._SubParsersAction)]
        if plain:
            out.append("Positional arguments:")
            for a in plain:
                out.append(f"{INDENT}{_positional_token(a)}")
                if a.help:
                    out.append(f"{INDENT * 2}{a.help}")
            out.append("")
        for sp in subparsers:
            out.append("Commands:")
            entries = sorted((c.dest, c.help or "") for c in sp._choices_actions
                             if c.help is not argparse.SUPPRESS)
            width = max((len(n) for n, _ in entries), default=0)
            for name, text in entries:
                out.append(f"{INDENT}{name.ljust(width)}  {text}".rstrip())
            out.append("")
        if optionals:
            out.append("Optional arguments:")
            for a in optionals:
                out.append(f"{INDENT}{_option_token(a)}")
                if a.help:
                    out.append(f"{INDENT * 2}{a.help}")
            out.append("")
        if self.epilog:
            out.append(f"{self.epilog}\n")
        return "\n".join(out).rstrip("\n") + "\n"


def add_help_flag(parser: argparse.ArgumentParser, *, hidden: bool = False) -> None:
    """Add `--help` (and `-h`) where it should appear in the usage line;
    `hidden` keeps it working but out of the help (as in the seed's server-migrate)."""
    parser.add_argument("-h", "--help", action="help", default=argparse.SUPPRESS,
                        help=argparse.SUPPRESS if hidden else HELP_TEXT)


def _has_help(parser: argparse.ArgumentParser) -> bool:
    return any(isinstance(a, argparse._HelpAction) for a in parser._actions)


def add_global_options(parser: argparse.ArgumentParser, *, hidden: bool = False) -> None:
    """--region, --output, --timeout and TLS files. On subcommands they are hidden and
    default to SUPPRESS, so `climc server-list --output json` works too."""

    def opt(*names: str, **kw: Any) -> None:
        if hidden:
            kw["help"] = argparse.SUPPRESS
            kw["default"] = argparse.SUPPRESS
        parser.add_argument(*names, **kw)

    opt("--region", metavar="ADDR", default=None,
        help="Region address host:port (env FERRY_REGION, default 127.0.0.1:7700)")
    opt("--output", choices=("table", "json"), default="table",
        help="Output format: table (default) or json")
    opt("--timeout", metavar="SECONDS", type=positive_float, default=None,
        help="Deadline of each request (default 30) and, when given, of a whole --wait")
    opt("--tls-ca", metavar="FILE", default=os.environ.get("FERRY_TLS_CA") or None,
        help="CA bundle (PEM) to verify the region over TLS (env FERRY_TLS_CA)")
    opt("--tls-cert", metavar="FILE", default=os.environ.get("FERRY_TLS_CERT") or None,
        help="Client certificate (PEM) for mutual TLS (env FERRY_TLS_CERT)")
    opt("--tls-key", metavar="FILE", default=os.environ.get("FERRY_TLS_KEY") or None,
        help="Client private key (PEM) for mutual TLS (env FERRY_TLS_KEY)")


class Registry:
    """Where resource modules declare their subcommands."""

    def __init__(self, subparsers: argparse._SubParsersAction[Any]) -> None:
        self._sub = subparsers
        self.parsers: dict[str, ClimcParser] = {}

    def command(self, name: str, summary: str, handler: Handler, *,
                description: str | None = None) -> ClimcParser:
        """A new subcommand `name`; add its arguments to the returned parser in
        the order they should appear in the usage line."""
        p: ClimcParser = self._sub.add_parser(name, help=summary, prog=f"climc {name}",
                                              description=description or summary)
        p.set_defaults(handler=handler, command=name)
        self.parsers[name] = p
        return p

    def finalize(self) -> None:
        """Give every command the hidden global options, and `--help` last unless placed."""
        for p in self.parsers.values():
            if not _has_help(p):
                add_help_flag(p)
            add_global_options(p, hidden=True)


# -- argument types ---------------------------------------------------------

def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value
