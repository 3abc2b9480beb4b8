"""climc commands: server-live-migrate, server-cancel-live-migrate, server-set-live-migrate-params (issue 4)."""

from __future__ import annotations

from .parser import Registry


def register(reg: Registry) -> None:
    """Adds this group's commands to climc."""
