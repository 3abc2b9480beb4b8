"""climc commands: server-migrate, servers-migrate (issue 5)."""

from __future__ import annotations

from .parser import Registry


def register(reg: Registry) -> None:
    """Adds this group's commands to climc."""
