"""Pacing for the disk copy's bandwidth cap: a token bucket shared by threads.

The target paces its reads (TCP flow control then slows the source), so one
bucket covers every disk of a guest copied in parallel and the cap can change
while the copy runs. The source can pace too, when a request asks it to.
"""

from __future__ import annotations

import threading
import time


class Pacer:
    """Bytes/s (0 = unlimited) with a quarter second of burst."""

    def __init__(self, rate: float = 0.0) -> None:
        self.rate = float(rate)
        self.tokens = 0.0
        self.last = time.monotonic()
        self._cond = threading.Condition()

    def set_rate(self, rate: float) -> None:
        """Takes effect at once, also for a caller waiting in take()."""
        with self._cond:
            self.rate = float(rate)
            self.tokens = min(self.tokens, 0.0)
            self.last = time.monotonic()
            self._cond.notify_all()

    def wake(self) -> None:
        """Lets every waiting take() look at its `stop` event now."""
        with self._cond:
            self._cond.notify_all()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.tokens + (now - self.last) * self.rate, self.rate / 4)
        self.last = now

    def take(self, n: int, stop: threading.Event | None = None) -> None:
        """Accounts n bytes; waits while over the rate, until `stop` is set."""
        with self._cond:
            if self.rate <= 0:
                return
            self._refill()
            self.tokens -= n
            while self.tokens < 0 and not (stop is not None and stop.is_set()):
                if self.rate <= 0:
                    self.tokens = 0.0
                    return
                self._cond.wait(-self.tokens / self.rate)
                if self.rate > 0:
                    self._refill()
