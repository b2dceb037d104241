"""Per-second counters written as JSON lines, shared by the guest workload programs.

Runs inside the guest: Python >= 3.9 standard library only. Each line is one second of the guest's
wall clock: {"t": <unix time at the start of that second>, <counter>: <value>, ...}. Seconds in
which nothing completed (the guest was paused, or a read blocked) are written as zeros, so the
host sees a gap as a dip rather than as a missing point."""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable
from typing import IO

Summary = Callable[[dict[str, float], list[float]], dict[str, float]]


class PerSecond:
    def __init__(self, out: IO[str], summarise: Summary | None = None):
        self.out = out
        self.summarise = summarise
        self.second = int(time.time())
        self.counts: dict[str, float] = {}
        self.latencies: list[float] = []
        self.stopped = False
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)

    def _stop(self, _sig: int, _frame: object) -> None:
        self.stopped = True

    def add(self, name: str, value: float = 1.0, latency: float | None = None) -> None:
        self.tick()
        self.counts[name] = self.counts.get(name, 0.0) + value
        if latency is not None:
            self.latencies.append(latency)

    def tick(self) -> None:
        """Write out every second that has ended since the last call."""
        now = int(time.time())
        while self.second < now:
            row: dict[str, float] = {"t": float(self.second)}
            row.update(self.counts)
            if self.summarise is not None:
                row.update(self.summarise(self.counts, self.latencies))
            self.out.write(json.dumps(row) + "\n")
            self.out.flush()
            self.second += 1
            self.counts = {}
            self.latencies = []

    def run_until_stopped(self, step: Callable[[], None], duration: float) -> int:
        end = time.time() + duration if duration > 0 else float("inf")
        while not self.stopped and time.time() < end:
            step()
        self.tick()
        return 0


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def open_output(path: str) -> IO[str]:
    return sys.stdout if path == "-" else open(path, "a", buffering=1)
