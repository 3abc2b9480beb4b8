"""The copy's bandwidth pacer: its rate, a change while a caller waits, and stop."""

from __future__ import annotations

import threading
import time

import pytest
from ferry_host.migration.bandwidth import Pacer

pytestmark = pytest.mark.timeout(30)


def test_unlimited_never_waits() -> None:
    p = Pacer(0)
    t = time.monotonic()
    for _ in range(1000):
        p.take(1 << 30)
    assert time.monotonic() - t < 0.5


def test_rate_is_kept() -> None:
    p = Pacer(20_000_000)  # 20 MB/s
    t = time.monotonic()
    for _ in range(12):
        p.take(1_000_000)
    took = time.monotonic() - t
    # 12 MB at 20 MB/s is 0.6 s, less the quarter second of burst the bucket may hold.
    assert 0.3 < took < 1.5, took


def test_raising_the_rate_wakes_a_waiting_caller() -> None:
    p = Pacer(1_000_000)  # 1 MB/s: taking 8 MB would wait ~8 s
    done = threading.Event()

    def run() -> None:
        p.take(8_000_000)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    time.sleep(0.2)
    assert not done.is_set()
    p.set_rate(0)
    assert done.wait(1.0), "set_rate(0) did not release the waiting caller"


def test_stop_releases_a_waiting_caller() -> None:
    p = Pacer(1_000_000)
    stop = threading.Event()
    done = threading.Event()

    def run() -> None:
        p.take(8_000_000, stop)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    time.sleep(0.2)
    stop.set()
    p.wake()
    assert done.wait(1.0), "stop + wake did not release the waiting caller"


def test_one_pacer_caps_several_threads_together() -> None:
    p = Pacer(20_000_000)
    t = time.monotonic()
    threads = [threading.Thread(target=lambda: [p.take(1_000_000) for _ in range(6)])
               for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    took = time.monotonic() - t
    assert took > 0.3, f"12 MB through a 20 MB/s pacer from two threads took only {took:.2f}s"
