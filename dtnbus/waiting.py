"""Waiting on another process's progress, where there is nothing to block on.

A node's height, a port opening, Prometheus' next scrape: no socket or event tells us,
so we look again at a short interval until it holds or a deadline passes. Every such
wait in the package, the benchmarks and the tests goes through `poll_until`, so each is
bounded and none is a bare sleep.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def poll_until(probe: Callable[[], T], timeout: float, interval: float = 0.05) -> T:
    """Call `probe` until it returns something truthy, and return that; after `timeout`
    seconds return its last (falsy) answer, so the caller can say what it saw."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)  # another process's progress: nothing to block on
