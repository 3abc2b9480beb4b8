"""A token bucket for the disk copy's bandwidth cap."""

from __future__ import annotations

import asyncio
import time

MB = 1_000_000


class TokenBucket:
    def __init__(self, rate_mb: float) -> None:
        self.rate = rate_mb * MB  # bytes/s; 0 = unlimited
        self.tokens = 0.0
        self.last = time.monotonic()

    async def take(self, n: int) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        self.tokens = min(self.tokens + (now - self.last) * self.rate, self.rate / 4)
        self.last = now
        self.tokens -= n
        if self.tokens < 0:
            await asyncio.sleep(-self.tokens / self.rate)
