"""Compare screen: runs as a table and a chart, filters, export."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import DataTable, Static

from pcteleport.records import Mode
from pcteleport.ui.app import create_app
from pcteleport.ui.compare_screen import CompareScreen
from tests.record_factory import MIB, constructed_run
from tests.ui.conftest import wait_for
from tests.ui.fake_backend import populated_backend


def backend_with_runs():  # type: ignore[no-untyped-def]
    b = populated_backend()
    b.stored = [
        constructed_run(Mode.STOCK, run_id="s1", seconds=10, wan_bytes=900 * MIB,
                        downtime_ms=310),
        constructed_run(Mode.TELEPORT, run_id="t1", seconds=3, wan_bytes=280 * MIB),
        constructed_run(Mode.ZSTD, vm="tpcc", run_id="z1", seconds=6, throughput=None),
    ]
    return b


async def open_compare(pilot, app) -> CompareScreen:  # type: ignore[no-untyped-def]
    await pilot.pause(0.05)
    await pilot.press("c")
    await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen))
    screen = app.screen
    await wait_for(pilot, lambda: screen.records, what="records")
    return screen  # type: ignore[return-value]


def table_ids(screen: CompareScreen) -> list[str]:
    return [k.value for k in screen.query_one("#cmp-table", DataTable).rows]


async def test_runs_side_by_side_with_filters_and_chart(tmp_path: Path) -> None:
    app = create_app(backend_with_runs(), refresh_s=60, export_dir=tmp_path)
    async with app.run_test(size=(120, 36)) as pilot:
        screen = await open_compare(pilot, app)
        assert table_ids(screen) == ["s1", "t1", "z1"]
        row = [str(c) for c in screen.query_one("#cmp-table", DataTable).get_row("t1")]
        assert row[1:5] == ["web", "tokyo→osaka", "teleport", "ok"]
        assert row[5:9] == ["3.5 s", "280.0 MiB", "300 ms", "5,200 blocks/s"]
        await pilot.press("v")  # first VM alphabetically: tpcc
        assert table_ids(screen) == ["z1"]
        await pilot.press("v")  # web
        assert table_ids(screen) == ["s1", "t1"]
        await pilot.press("o", "o", "o", "o")  # all → stock → drop-cache → zstd → teleport
        assert screen.mode_filter is Mode.TELEPORT and table_ids(screen) == ["t1"]
        filters = str(screen.query_one("#cmp-filters", Static).render())
        assert "web" in filters and "teleport" in filters and "1 of 3 runs" in filters
        await pilot.press("g")
        assert screen.metric.key == "wan_bytes"
        await pilot.press("e")
        await wait_for(pilot, lambda: len(list(tmp_path.iterdir())) == 2, what="exports")
        csv_file = next(tmp_path.glob("*.csv"))
        md_file = next(tmp_path.glob("*.md"))
        assert csv_file.read_text().count("\n") == 2  # header + the one filtered run
        assert "| web | teleport |" in md_file.read_text()
        await pilot.press("escape")
        assert not isinstance(app.screen, CompareScreen)


async def test_no_runs_says_so() -> None:
    app = create_app(populated_backend(), refresh_s=60)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.05)
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen))
        await pilot.pause(0.1)
        assert "no recorded runs yet" in str(app.screen.query_one("#cmp-filters", Static).render())


async def test_the_same_run_twice_is_listed_once() -> None:
    b = backend_with_runs()
    b.stored.append(b.stored[0])
    app = create_app(b, refresh_s=60)
    async with app.run_test(size=(120, 36)) as pilot:
        screen = await open_compare(pilot, app)
        assert table_ids(screen) == ["s1", "t1", "z1"]


def test_bar_chart_marks_runs_that_did_not_finish() -> None:
    from pcteleport.compare import METRICS
    from pcteleport.records import Result
    from pcteleport.ui.compare_screen import bar_chart

    ok = constructed_run(Mode.STOCK, run_id="a", seconds=10)
    failed = constructed_run(Mode.TELEPORT, run_id="b", seconds=4, result=Result.FAILED)
    lines = bar_chart([ok, failed], METRICS[0], 60).plain.splitlines()
    assert lines[0] == "total time"
    assert "█" in lines[1] and "(failed)" not in lines[1] and lines[1].endswith("10.5 s")
    assert "▒" in lines[2] and lines[2].endswith("4.5 s (failed)")
    assert lines[1].count("█") > lines[2].count("▒")  # scaled to the longest run
