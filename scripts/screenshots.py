#!/usr/bin/env python3
"""Write screenshots/*.svg of every console screen by driving the real app on recordings.

    scripts/screenshots.py [--out DIR] [--size WxH] [--speed N] FILE...   (default: recordings/)

The console runs on a ReplayBackend, exactly as `pcteleport replay` does; the migration
screens show the first teleport recording (else the first recording). Recordings must come
from real lab runs (the migration service writes one per run into the record store): this
script never makes data up.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pcteleport.errors import PcteleportError  # noqa: E402
from pcteleport.record_store import read_record  # noqa: E402
from pcteleport.records import Mode  # noqa: E402
from pcteleport.sites.replay import ReplayBackend  # noqa: E402
from pcteleport.ui.app import create_app  # noqa: E402


async def _until(pilot, condition: Callable[[], object], timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise PcteleportError(f"screenshots: timed out waiting for {what}")
        await pilot.pause(0.05)


async def shoot(files: list[Path], out: Path, size: tuple[int, int], speed: float) -> list[Path]:
    from pcteleport.ui.compare_screen import CompareScreen
    from pcteleport.ui.main_screen import SitePane
    from pcteleport.ui.migrate_dialog import MigrateDialog
    from pcteleport.ui.migration_view import MigrationView
    from pcteleport.ui.vm_detail import VMDetailScreen

    # In the order they ran, as the record store lists them (the compare screen shows it).
    records = sorted((read_record(f) for f in files), key=lambda r: r.started_at)
    # The migration screens show a teleport run when there is one (it is what pcteleport adds).
    run = next((r for r in records if r.mode is Mode.TELEPORT), records[0])
    # Unless told, play the shown run in about 4 s, whatever the other recordings last.
    speed = speed or max(1.0, (run.total_s or 4.0) / 4.0)
    backend = ReplayBackend(records, speed=speed, title="replay")
    app = create_app(backend, refresh_s=600, autoplay=False)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(name: str) -> None:
        written.append(Path(app.save_screenshot(f"{name}.svg", str(out))))

    async with app.run_test(size=size) as pilot:
        def source_pane() -> SitePane | None:
            return next((p for p in app.screen.query(SitePane)
                         if p.site.name == run.from_site and p.table.row_count), None)

        await _until(pilot, source_pane, 10, "the source site's VMs")
        pane = source_pane()
        assert pane is not None
        pane.table.focus()
        await pilot.pause(0.2)
        save("main")
        await pilot.press("enter")
        await _until(pilot, lambda: isinstance(app.screen, VMDetailScreen), 5, "VM detail")
        await pilot.pause(0.3)
        save("vm-detail")
        await pilot.press("escape", "m")
        await _until(pilot, lambda: isinstance(app.screen, MigrateDialog), 5, "migrate dialog")
        dialog = app.screen
        await _until(pilot, lambda: dialog.inputs is not None or dialog.measure_error, 10,
                     "the dialog's measurement")
        await pilot.press(str(list(Mode).index(run.mode) + 1))
        await pilot.pause(0.2)
        save("migrate-dialog")
        await pilot.press("ctrl+s")
        await _until(pilot, lambda: isinstance(app.screen, MigrationView), 5, "migration view")
        view = app.screen
        assert isinstance(view, MigrationView)
        half = max(1, len(run.samples) // 2)
        await _until(pilot, lambda: len(view.builder.record.samples) >= half or view.final,
                     60, "half the run")
        save("migration-running")
        await _until(pilot, lambda: view.final is not None, 120, "the end of the run")
        await pilot.pause(0.3)
        save("migration-done")
        await pilot.press("escape", "c")
        await _until(pilot, lambda: isinstance(app.screen, CompareScreen)
                     and app.screen.records, 5, "compare")
        await pilot.pause(0.2)
        save("compare")
        await pilot.press("question_mark")
        await pilot.pause(0.2)
        save("help")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="*", type=Path, help="recordings (JSON)")
    parser.add_argument("--out", type=Path, default=ROOT / "screenshots")
    parser.add_argument("--size", default="120x36", help="terminal size, WxH")
    parser.add_argument("--speed", type=float, default=0.0,
                        help="replay speed (default: whatever makes the shown run last ~4 s)")
    args = parser.parse_args(argv)
    files = args.files or sorted((ROOT / "recordings").glob("*.json"))
    if not files:
        print("screenshots: no recordings (recordings/*.json is empty): copy records of real "
              "lab runs there first (see recordings/README.md)", file=sys.stderr)
        return 2
    w, _, h = args.size.partition("x")
    try:
        for path in asyncio.run(shoot(files, args.out, (int(w), int(h)), args.speed)):
            print(path)
    except PcteleportError as exc:
        print(f"screenshots: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
