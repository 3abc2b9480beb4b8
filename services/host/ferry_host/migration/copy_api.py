"""MigrationAgentService handlers for cold migration disk copy (issue 5)."""

from __future__ import annotations


class DiskCopyHandlers:
    """ReadDisk (source side) and PullDisks (target side)."""
