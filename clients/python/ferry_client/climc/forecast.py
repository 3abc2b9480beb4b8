"""climc commands: server-migrate-forecast (issue 3)."""

from __future__ import annotations

from .parser import Registry


def register(reg: Registry) -> None:
    """Adds this group's commands to climc."""
