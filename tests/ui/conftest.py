"""Helpers for pilot tests: build the app the product's way, wait for conditions."""

from __future__ import annotations

import time
from collections.abc import Callable

from textual.css.query import NoMatches
from textual.pilot import Pilot


def _holds(condition: Callable[[], object]) -> bool:
    # A widget that is mounting has no children yet: not yet true, rather than an error.
    try:
        return bool(condition())
    except NoMatches:
        return False


async def wait_for(pilot: Pilot, condition: Callable[[], object], timeout: float = 5.0,
                   what: str = "condition") -> None:
    """Let the app run until `condition()` is true; fail with `what` after `timeout`. Then let
the screen handle what is already queued: state the tracker keeps changes a beat before the
screens it tells have shown it."""
    deadline = time.monotonic() + timeout
    while not _holds(condition):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.02)
    await pilot.pause()
