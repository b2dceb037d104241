"""A run's events as they happen: phases and log lines into its record and out to the caller.

Called from the run's thread and from libvirt's event thread (phases), hence the lock."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

from pcteleport.records import (
    LogLine,
    MigrationEvent,
    MigrationRecord,
    Phase,
    PhaseMark,
    RecordBuilder,
)


class Journal:
    def __init__(self, record: MigrationRecord,
                 on_event: Callable[[MigrationEvent], None]) -> None:
        self.record = record
        self.on_event = on_event
        self.t0 = time.monotonic()
        self.builder = RecordBuilder(record)
        self.current: Phase | None = None
        self.iteration = 1  # the precopy pass QEMU is in
        self._lock = threading.Lock()

    def t(self, at: float | None = None) -> float:
        """Seconds since the run began (of monotonic time `at`, else now)."""
        return round((at if at is not None else time.monotonic()) - self.t0, 3)

    def emit(self, event: MigrationEvent) -> None:
        with self._lock:
            self.builder.add(event)
        with contextlib.suppress(Exception):  # the caller's trouble is not the migration's
            self.on_event(event)

    def phase(self, phase: Phase, iteration: int = 0, at: float | None = None) -> None:
        """Enter `phase` (now, or at monotonic time `at`); entering it again does nothing."""
        if phase != Phase.ITERATIVE and (
                phase == self.current or any(m.phase == phase for m in self.record.phases)):
            return
        self.current = phase
        self.emit(PhaseMark(phase, self.t(at), iteration))

    def place_phase(self, mark: PhaseMark) -> None:
        """A phase learnt afterwards, placed before the last one (no event told us in time)."""
        with self._lock:
            self.record.phases.insert(len(self.record.phases) - 1, mark)

    def log(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self.emit(LogLine(self.t(), f"{stamp} {text}"))
