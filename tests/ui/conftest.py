"""Helpers for pilot tests: build the app the product's way, wait for conditions."""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from typing import Any

import pytest
from pytest_textual_snapshot import node_to_report_path
from textual.css.query import NoMatches
from textual.pilot import Pilot

from tests.ui.svg_reading import explain


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


@pytest.fixture
def snap_compare(snap_compare: Any, request: pytest.FixtureRequest) -> Any:
    """pytest-textual-snapshot's, saying what differs: its report is a file on the machine
    that ran the test, and a CI log is all we get from a clean-clone run."""
    def compare(*args: Any, **kwargs: Any) -> bool:
        same = snap_compare(*args, **kwargs)
        if not same:
            data = pickle.loads(node_to_report_path(request.node).read_bytes())
            print(f"snapshot differs from {request.node.name}'s:\n{explain(data[1], data[2])}")
        return same

    return compare


async def steady(pilot: Pilot, timeout: float = 15.0) -> None:
    """Let the app run until its screen holds still: the same picture after the app has been
    idle twice over, so a snapshot never catches a focus, a layout or a column width on its
    way (a loaded machine delivers them late: a CI run caught a table with the headers'
    widths). A screen that never holds still fails, saying so."""
    deadline = time.monotonic() + timeout
    last, same = "", 0
    while same < 2:
        if time.monotonic() > deadline:
            raise AssertionError(f"the screen did not hold still within {timeout:g} s")
        await pilot.pause()
        await pilot.pause(0.05)
        now = pilot.app.export_screenshot()
        same = same + 1 if now == last else 0
        last = now
