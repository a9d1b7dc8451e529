"""Resident memory of node processes, sampled from /proc: what a flood costs a node.

`VmRSS` in /proc/PID/status is the kernel's count of the process's resident pages
(anonymous, file-backed and shared together), the figure a memory limit acts on.
`RssSampler` reads it for a set of processes every `interval` seconds in a thread and
keeps each one's peak, so a short spike between two reads of the caller is not missed.
With a `limit`, it raises a flag once any process goes above it, so a flood that would
take the machine's memory can be stopped; with `kill_above`, a process still growing past
that is killed (the caller's own node processes only) before the kernel's OOM killer
picks a victim on a shared machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from pathlib import Path


def rss_bytes(pid: int) -> int | None:
    """VmRSS of `pid` in bytes; None if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class RssSampler:
    """Peak and last VmRSS per process, sampled in a background thread."""

    def __init__(self, pids: dict[int, int], interval: float = 0.05,
                 limit: int | None = None, kill_above: int | None = None) -> None:
        self.pids = dict(pids)  # name (node id) -> pid
        self.interval = interval
        self.limit = limit  # bytes: `exceeded` is set once any process is above it
        self.exceeded = threading.Event()
        # bytes: a process above this is SIGKILLed (only for processes the caller started:
        # a node whose queues outgrow a stopped flood would otherwise take the machine)
        self.kill_above = kill_above
        self.killed: dict[int, int] = {}  # name -> RSS when it was killed
        self.peak: dict[int, int] = {}
        self.last: dict[int, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def start(self) -> RssSampler:
        self._sample()
        self._thread.start()
        return self

    def reset_peaks(self) -> None:
        self.peak = dict(self.last)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        for name, pid in self.pids.items():
            value = rss_bytes(pid)
            if value is None:
                continue
            self.last[name] = value
            self.peak[name] = max(value, self.peak.get(name, 0))
            if self.limit is not None and value > self.limit:
                self.exceeded.set()
            if self.kill_above is not None and value > self.kill_above and name not in self.killed:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                self.killed[name] = value
        self.samples += 1
