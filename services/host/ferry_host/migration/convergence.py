"""When to raise the downtime limit, and when to give up.

`--quickly-finish` raises the downtime limit stepwise once memory has gone
through `rounds` dirty-sync iterations without completing, up to a hard cap.
Every migration also has a completion deadline (proportional to what it has
to move) and a stall deadline (no byte moved); both abort the migration, so
no path leaves the guest paused indefinitely.
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024
DEFAULT_STALL_S = 60
MIN_COMPLETION_S = 60
#: MB/s assumed for the completion deadline when the bandwidth is unlimited.
ASSUMED_RATE_MB = 32
ROUNDS = 3


def completion_timeout(memory_mb: int, disk_mb: int, bandwidth_mb: int) -> float:
    rate = bandwidth_mb if bandwidth_mb > 0 else ASSUMED_RATE_MB
    return max(MIN_COMPLETION_S, 4.0 * (memory_mb + disk_mb) / rate)


@dataclass
class DowntimePolicy:
    limit_ms: int
    cap_ms: int
    enabled: bool
    rounds: int = ROUNDS
    _base_iteration: int = -1

    def next_limit(self, iteration: int, expected_ms: int) -> int | None:
        """A higher downtime limit to set now, or None."""
        if not self.enabled or self.limit_ms >= self.cap_ms:
            return None
        if self._base_iteration < 0:
            self._base_iteration = iteration
            return None
        if iteration - self._base_iteration < self.rounds:
            return None
        self._base_iteration = iteration
        new = min(self.cap_ms, max(self.limit_ms * 2, expected_ms + 50))
        self.limit_ms = new
        return new
