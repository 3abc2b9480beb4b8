"""One exception root for the launcher; the root cause stays in __cause__."""

from __future__ import annotations


class ComposeError(Exception):
    """Anything the launcher cannot do."""


class SpecError(ComposeError):
    """The cluster description is invalid (bad host count, accelerator, port...)."""


class ProcessFailed(ComposeError):
    """A process of the cluster exited or never became ready."""

    def __init__(self, name: str, message: str, log_tail: str = "") -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.log_tail = log_tail


class StartupTimeout(ProcessFailed):
    """A process did not become ready before the deadline."""


class AlreadyRunning(ComposeError):
    """`up` found a live cluster recorded in the same folder."""
