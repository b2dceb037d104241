"""Polls that never overlap (Dolphie's rule): the next poll is scheduled only when the previous
one has finished, at most one timer at a time; while the console is paused a due poll waits."""

from __future__ import annotations

from collections.abc import Callable

from textual.dom import DOMNode
from textual.timer import Timer


class PollSchedule:
    def __init__(self, owner: DOMNode, poll: Callable[[], object],
                 paused: Callable[[], bool], interval: Callable[[], float]) -> None:
        self._owner, self._poll, self._paused, self._interval = owner, poll, paused, interval
        self._timer: Timer | None = None
        self._due = False

    def next(self) -> None:
        """Call when a poll has finished."""
        # One timer at most: a manual refresh racing a scheduled one must not fork the loop.
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        if self._paused():
            self._due = True
        else:
            self._timer = self._owner.set_timer(self._interval(), self._poll)

    def resume(self) -> None:
        """After a pause: run the poll that fell due meanwhile."""
        if self._due:
            self._due = False
            self._poll()
