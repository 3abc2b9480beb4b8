"""Pacing for the disk copy's bandwidth cap (the sender's thread sleeps)."""

from __future__ import annotations

import time


class Pacer:
    """A token bucket in bytes/s (0 = unlimited) with a quarter second of burst."""

    def __init__(self, rate: float) -> None:
        self.rate = float(rate)
        self.tokens = 0.0
        self.last = time.monotonic()

    def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        self.tokens = min(self.tokens + (now - self.last) * self.rate, self.rate / 4)
        self.last = now
        self.tokens -= n
        if self.tokens < 0:
            time.sleep(-self.tokens / self.rate)
