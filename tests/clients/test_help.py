"""Help texts in the seed's (Cloudpods) style, and the installed entry point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ferry_client.climc.main import build_parser, main

COMMANDS = ["image-create", "image-list", "image-show", "image-delete", "server-create", "server-start",
            "server-stop", "server-delete", "server-show", "server-list", "server-serial-log",
            "host-list", "host-show", "task-list", "task-show"]


def help_of(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main([*argv, "--help"]) == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("cmd", COMMANDS)
def test_every_command_has_seed_style_help(capsys: pytest.CaptureFixture[str], cmd: str) -> None:
    text = help_of(capsys, cmd)
    lines = text.splitlines()
    assert lines[0].startswith(f"Usage: climc {cmd} ")
    assert lines[2]  # one-line description
    assert "Optional arguments:" in lines
    assert "    [--help]" in lines and "        Print usage and this help message and exit." in lines
    # every option is listed with a one-line description under it
    opts = [i for i, x in enumerate(lines) if x.startswith("    [--") or x.startswith("    --")]
    assert opts and all(lines[i + 1].startswith("        ") and lines[i + 1].strip() for i in opts)
    assert "--region" not in text  # globals only in `climc --help`


def test_usage_lines_match_contract(capsys: pytest.CaptureFixture[str]) -> None:
    usage = {c: help_of(capsys, c).splitlines()[0] for c in COMMANDS}
    assert usage["server-show"] == "Usage: climc server-show [--help] <ID>"
    assert usage["server-stop"] == "Usage: climc server-stop [--force] [--wait] [--help] <ID>"
    assert usage["image-create"] == ("Usage: climc image-create --file FILE [--format {qcow2,raw}] "
                                     "[--min-mem MIN_MEM] [--help] <NAME>")
    assert usage["server-list"] == ("Usage: climc server-list [--search SEARCH] [--details] "
                                    "[--scope {project,system}] [--project PROJECT] [--host HOST] "
                                    "[--status STATUS] [--limit LIMIT] [--page-token PAGE_TOKEN] [--help]")
    assert usage["host-list"] == "Usage: climc host-list [--hypervisor HYPERVISOR] [--search SEARCH] [--help]"
    assert usage["server-serial-log"] == "Usage: climc server-serial-log [--tail TAIL] [--follow] [--help] <ID>"
    assert usage["task-list"] == ("Usage: climc task-list [--server SERVER] "
                                  "[--state {running,succeeded,failed,rolling_back}] [--limit LIMIT] [--help]")
    assert "Positional arguments:\n    <ID>\n        ID or name of server" in help_of(capsys, "server-start")


def test_main_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_of(capsys)
    assert text.startswith("Usage: climc [--region ADDR] [--output {table,json}] [--timeout SECONDS]")
    for cmd in COMMANDS:
        assert f"\n    {cmd} " in text
    assert main(["help", "server-list"]) == 0
    assert capsys.readouterr().out.startswith("Usage: climc server-list")


def test_registry_lets_later_commands_place_help() -> None:
    # A later command can mirror the seed exactly, e.g. server-live-migrate puts [--help] mid-line.
    from ferry_client.climc.parser import ClimcParser, Registry, add_help_flag
    parser = ClimcParser(prog="climc")
    reg = Registry(parser.add_subparsers(dest="command", parser_class=ClimcParser))
    p = reg.command("server-live-migrate", "Live-Migrate server", lambda c, a: 0)
    p.add_argument("--skip-cpu-check", action="store_true", help="Skip check CPU mode of the target host")
    add_help_flag(p)
    p.add_argument("--prefer-host", help="Server migration prefer host id or name")
    p.add_argument("id", metavar="ID", help="ID of server")
    q = reg.command("server-migrate", "Migrate server", lambda c, a: 0)
    add_help_flag(q, hidden=True)
    q.add_argument("--auto-start", action="store_true", help="Server auto start after migrate")
    q.add_argument("id", metavar="ID", help="ID of server")
    reg.finalize()
    assert p.format_usage() == ("Usage: climc server-live-migrate [--skip-cpu-check] [--help] "
                                "[--prefer-host PREFER_HOST] <ID>\n")
    assert q.format_help() == ("Usage: climc server-migrate [--auto-start] <ID>\n\nMigrate server\n\n"
                               "Positional arguments:\n    <ID>\n        ID of server\n\n"
                               "Optional arguments:\n    [--auto-start]\n        Server auto start after migrate\n")
    assert build_parser() is not None


def test_entry_point_subprocess(closed_address: str) -> None:
    exe = Path(sys.executable).parent / "climc"
    if not exe.exists():
        pytest.skip("climc entry point not installed: pip install -e . --no-deps")
    done = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=20)
    assert done.returncode == 0 and done.stdout.startswith("Usage: climc ")
    assert "server-create" in done.stdout
    done = subprocess.run([str(exe), "--region", closed_address, "host-list"],
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("climc: error: UNAVAILABLE: cannot reach the region at")
    assert "Traceback" not in done.stderr
