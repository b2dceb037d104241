"""Polls that never overlap (Dolphie's rule): the next poll is scheduled only when the previous
one has finished, at most one timer at a time; while the console is paused a due poll waits,
and runs as soon as the pause ends."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, cast

from textual.dom import DOMNode
from textual.timer import Timer


class PollSettings(Protocol):
    """What a schedule follows: the App's reactive `refresh_s` and `paused`."""

    refresh_s: float
    paused: bool


class PollSchedule:
    def __init__(self, owner: DOMNode, poll: Callable[[], object]) -> None:
        self._owner, self._poll = owner, poll
        self._settings: PollSettings | None = None
        self._timer: Timer | None = None
        self._due = False

    def start(self, settings: PollSettings) -> None:
        """Call from the owner's on_mount: the first poll now, the next ones after `next()`.
        The schedule watches `settings.paused` itself (the watch ends with its owner)."""
        self._settings = settings
        self._owner.watch(cast(DOMNode, settings), "paused", self._paused_changed, init=False)
        self._poll()

    def next(self) -> None:
        """Call when a poll has finished."""
        # One timer at most: a manual refresh racing a scheduled one must not fork the loop.
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        settings = self._settings
        if settings is None:  # not started: nothing to repeat
            return
        if settings.paused:
            self._due = True
        else:
            self._timer = self._owner.set_timer(settings.refresh_s, self._poll)

    def _paused_changed(self, paused: bool) -> None:
        # After a pause: run the poll that fell due meanwhile.
        if not paused and self._due:
            self._due = False
            self._poll()
