"""The showcase (README, screenshots/): real runs of the case pcteleport is for, shown whole.

Issue 15, item 4: it was a `web-small` run in which teleport (6.9 s) lost to zstd (5.9 s), its
rate plot showed 1.88-3.88 s of the run and the compare table's "throughput after" was "–"."""

from __future__ import annotations

from pathlib import Path

from pcteleport.record_store import read_record
from pcteleport.records import Mode
from tests.ui.svg_reading import shown

ROOT = Path(__file__).resolve().parent.parent.parent
RECORDINGS = sorted((ROOT / "recordings").glob("*.json"))


def screenshot(name: str) -> list[str]:
    return shown((ROOT / "screenshots" / f"{name}.svg").read_text(encoding="utf-8"))


def test_the_recordings_are_web_in_every_mode_and_teleport_wins() -> None:
    records = [read_record(p) for p in RECORDINGS]
    by_mode = {r.mode: r for r in records}
    assert set(by_mode) == set(Mode) and len(records) == len(Mode)
    teleport = by_mode[Mode.TELEPORT]
    assert {r.vm for r in records} == {"web"}  # the product's scenario, not web-small
    assert all(teleport.total_s < r.total_s for r in records if r is not teleport)  # type: ignore[operator]
    assert all(teleport.wan_bytes < r.wan_bytes for r in records if r is not teleport)
    assert all(r.throughput_after is not None for r in records)


def test_the_finished_run_is_plotted_from_the_request_to_the_resume() -> None:
    teleport = next(read_record(p) for p in RECORDINGS if read_record(p).mode is Mode.TELEPORT)
    lines = screenshot("migration-done")
    assert lines[1].split()[:5] == ["web", "tokyo", "→", "osaka", "teleport"]
    assert f"total {teleport.total_s:.1f} s" in lines[3]
    axis = next(i for i, line in enumerate(lines) if "└" in line)
    ticks = [float(x) for x in lines[axis + 1].split()]
    assert ticks[0] == 0.0 and abs(ticks[-1] - teleport.total_s) < 0.05  # type: ignore[operator]
    canvas = "\n".join(lines[:axis])
    assert all(name in canvas for name in ("map", "iterative", "stop-and-copy", "resume"))


def test_the_compare_screen_shows_throughput_after_for_every_run() -> None:
    lines = screenshot("compare")
    head = next(i for i, line in enumerate(lines) if "throughput after" in line)
    column = lines[head].index("throughput after")
    rows = lines[head + 1:head + 1 + len(RECORDINGS)]
    assert [row[column:].split()[1] for row in rows] == ["blocks/s"] * len(RECORDINGS)
