"""scripts/screenshots.py drives the real app through a replay and writes every screen."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pcteleport.record_store import RecordStore
from tests.record_factory import constructed_run

ROOT = Path(__file__).resolve().parent.parent
SCREENS = {"main", "vm-detail", "migrate-dialog", "migration-running", "migration-done",
           "compare", "help"}


def test_screenshots_of_every_screen_from_a_recording(tmp_path: Path) -> None:
    # A record the test builds; shipped screenshots come from real lab recordings.
    path = RecordStore(tmp_path / "rec").save(constructed_run(seconds=4))
    out = tmp_path / "shots"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "screenshots.py"), "--out", str(out),
         "--size", "100x30", "--speed", "8", str(path)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert {p.stem for p in out.glob("*.svg")} == SCREENS
    done = (out / "migration-done.svg").read_text()
    assert done.startswith("<svg") and "teleport" in done


def test_no_recordings_is_a_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "screenshots.py"), "--out", str(tmp_path),
         str(tmp_path / "none.json")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "cannot read record" in proc.stderr
