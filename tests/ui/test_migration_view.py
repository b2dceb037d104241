"""Migration view: phases, a progress bar that never runs backwards silently, counters,
downtime, the log, abort with confirmation."""

from __future__ import annotations

import dataclasses

import pytest
from textual.widgets import Digits, ProgressBar, RichLog, Static
from textual_plotext import PlotextPlot

from pcteleport.backend import MigrationRequest
from pcteleport.records import Mode, Phase, PhaseMark, Result
from pcteleport.sites.replay import ReplayBackend
from pcteleport.ui.app import create_app
from pcteleport.ui.confirm import ConfirmScreen
from pcteleport.ui.migration_view import (
    MigrationView,
    eta_seconds,
    phase_lines,
    place_labels,
    plot_end,
)
from tests.record_factory import constructed_run
from tests.ui.conftest import wait_for
from tests.ui.fake_backend import populated_backend

REQUEST = MigrationRequest("u-web", "osaka", Mode.TELEPORT)


def text(view: MigrationView, selector: str) -> str:
    return str(view.query_one(selector, Static).render())


async def start(pilot, app, request: MigrationRequest = REQUEST) -> MigrationView:  # type: ignore[no-untyped-def]
    """Start a migration on the app's tracker and open its view, as the dialog does."""
    await pilot.pause(0.05)
    view = MigrationView(app.tracker.start(request), app.tracker)
    await app.push_screen(view)
    return view


async def started(pilot, app, backend) -> MigrationView:  # type: ignore[no-untyped-def]
    """A view whose run has begun (its first phases are in)."""
    view = await start(pilot, app)
    backend.release(2)
    await wait_for(pilot, lambda: view.builder.record.phases)
    return view


async def test_progress_phases_counters_and_final_downtime() -> None:
    backend = populated_backend(step_by_step=True)
    app = create_app(backend, refresh_s=60)
    async with app.run_test(size=(100, 32)) as pilot:
        view = await start(pilot, app)
        await wait_for(pilot, lambda: "web" in text(view, "#mig-title"), what="title")
        assert "tokyo → osaka" in text(view, "#mig-title")
        backend.release(5)  # prepare, log, map, iterative, first sample (700 MiB left)
        await wait_for(pilot, lambda: len(view.builder.record.samples) == 1)
        bar = view.query_one(ProgressBar)
        first = bar.progress
        assert 30 < first < 32  # 1 - 700/1024
        assert "iterative #1" in text(view, "#mig-phases")
        assert "700.0 MiB left" in text(view, "#mig-eta") and "ETA" in text(view, "#mig-eta")
        assert str(view.query_one("#mig-downtime", Digits).value) == "290"
        backend.release(4)  # log, 400 MiB left, log, 450 MiB left: the remainder grew
        await wait_for(pilot, lambda: len(view.builder.record.samples) == 3)
        second = bar.progress
        assert second > first
        note = text(view, "#mig-note")
        assert "dirtied memory faster" in note and "450.0 MiB left" in note and "+50.0 MiB" in note
        assert bar.progress == second  # held, not moved back
        counters = text(view, "#mig-counters")
        assert "30,000" in counters and "60,000" in counters and "9,000" in counters
        backend.release(100)
        await wait_for(pilot, lambda: view.final is not None, what="the end")
        assert view.final.result is Result.OK
        assert bar.progress == 100
        assert str(view.query_one("#mig-downtime", Digits).value) == "287"
        assert "total 6.5 s" in text(view, "#mig-eta") and "OK" in text(view, "#mig-title")
        assert "WAN total 140.0 MiB = 14% of 1.0 GiB" in text(view, "#mig-counters")
        assert "✓ done" in text(view, "#mig-phases")
        log_lines = [str(line.text) for line in view.query_one(RichLog).lines]
        assert log_lines[0] == "2025-11-24 16:00:00 starting migration"  # verbatim
        assert log_lines[-1] == "2025-11-24 16:00:06 migration finished successfully"


async def test_abort_asks_first_and_no_means_no() -> None:
    backend = populated_backend(step_by_step=True)
    app = create_app(backend, refresh_s=60)
    async with app.run_test(size=(100, 32)) as pilot:
        view = await started(pilot, app, backend)
        await pilot.press("a")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        assert app.screen is view and backend.aborted == []
        await pilot.press("a", "y")
        await wait_for(pilot, lambda: view.final is not None, what="aborted run")
        assert backend.aborted == ["u-web"] and view.final.result is Result.ABORTED
        assert "aborted" in text(view, "#mig-note")
        assert "ABORTED" in text(view, "#mig-title")
        await pilot.press("escape")
        assert app.screen is not view


async def test_a_request_the_backend_refuses_is_shown_as_failed() -> None:
    backend = populated_backend()
    app = create_app(backend, refresh_s=60)
    async with app.run_test(size=(100, 32)) as pilot:
        backend.vms_by_site = {"tokyo": []}

        def refuse(request, on_event):  # type: ignore[no-untyped-def]
            from pcteleport.backend import ServiceError

            raise ServiceError("no VM u-nowhere at any site")

        backend.migrate = refuse  # type: ignore[method-assign]
        view = await start(pilot, app, MigrationRequest("u-nowhere", "osaka", Mode.STOCK))
        await wait_for(pilot, lambda: view.final is not None)
        assert view.final.result is Result.FAILED
        assert "no VM u-nowhere" in text(view, "#mig-note")


def test_eta_uses_the_net_rate_of_recent_samples() -> None:
    run = constructed_run(seconds=4)
    s = run.samples
    net = s[-1].guest_rate_bytes_per_s - s[-1].dirty_rate_bytes_per_s
    assert eta_seconds(s) == s[-1].remaining_bytes / net
    assert eta_seconds([]) is None


@pytest.mark.parametrize("left", [False, True], ids=["watched", "left-running"])
async def test_quitting_during_a_migration_asks_first(left: bool) -> None:
    """Also when its view was left (Esc) and the list is on the screen."""
    backend = populated_backend(step_by_step=True)
    app = create_app(backend, refresh_s=60)
    async with app.run_test(size=(100, 32)) as pilot:
        view = await started(pilot, app, backend)
        if left:
            await pilot.press("escape")
            assert app.screen is not view
        await pilot.press("q")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        assert app.is_running and (app.screen is not view) == left
        backend.release(100)
        await wait_for(pilot, lambda: view.final is not None)
        await pilot.press("q")
        await wait_for(pilot, lambda: not app.is_running, what="quit after the run")


async def select(pilot, main, uuid: str) -> None:  # type: ignore[no-untyped-def]
    """Put the cursor of the main screen on the VM `uuid`."""
    from pcteleport.ui.main_screen import SitePane

    await wait_for(pilot, lambda: any(p.ready and uuid in {k.value for k in p.table.rows}
                                      for p in main.query(SitePane)), what=f"{uuid} listed")
    pane = next(p for p in main.query(SitePane) if uuid in {k.value for k in p.table.rows})
    pane.table.focus()
    pane.table.move_cursor(row=pane.table.get_row_index(uuid), animate=False)
    await pilot.pause(0.02)
    assert main.selected()[1].uuid == uuid


async def test_leaving_a_running_migration_and_coming_back() -> None:
    """Esc while it runs: back to the list, the view is gone but the run goes on (the App's
    tracker runs it); Enter on the VM opens a view with everything that happened meanwhile;
    after its end has been seen, Enter shows the VM's details again."""
    from pcteleport.ui.main_screen import MainScreen
    from pcteleport.ui.vm_detail import VMDetailScreen

    backend = populated_backend(step_by_step=True)
    app = create_app(backend, refresh_s=60)
    async with app.run_test(size=(100, 32)) as pilot:
        view = await start(pilot, app)
        migration = view.migration
        backend.release(5)
        await wait_for(pilot, lambda: len(migration.record.samples) == 1)
        await pilot.press("escape")
        main = app.screen
        assert isinstance(main, MainScreen)
        assert not view.is_attached and view not in app.screen_stack  # the view is gone...
        assert app.tracker.running() == [migration]  # ...the migration is not
        backend.release(100)  # the run ends while nobody watches it
        await wait_for(pilot, lambda: migration.final is not None, what="the end, unwatched")
        assert migration.final.result is Result.OK and len(migration.record.samples) > 1
        await select(pilot, main, "u-web")
        await pilot.press("enter")
        again = app.screen
        assert isinstance(again, MigrationView) and again is not view
        assert again.migration is migration  # a new view of the same migration
        assert "OK" in text(again, "#mig-title") and again.query_one(ProgressBar).progress == 100
        log_lines = [str(line.text) for line in again.query_one(RichLog).lines]
        assert log_lines == [entry.text for entry in migration.lines]
        assert log_lines[-1] == "2025-11-24 16:00:06 migration finished successfully"
        await pilot.press("escape")
        assert app.screen is main
        await pilot.press("enter")  # its end was seen: the VM's details now
        await wait_for(pilot, lambda: isinstance(app.screen, VMDetailScreen))


async def test_a_guest_that_died_after_the_switch_over_is_shown_running_nowhere() -> None:
    backend = populated_backend(outcome={
        "result": Result.FAILED, "runs_at": "nowhere",
        "error": "VM web crashed at osaka after the switch-over (guest console: "
                 "'Kernel panic - not syncing: Fatal exception in interrupt')",
        "guest_console": ["Kernel panic - not syncing: Fatal exception in interrupt"]})
    app = create_app(backend, refresh_s=60)
    async with app.run_test(size=(100, 32)) as pilot:
        view = await start(pilot, app)
        await wait_for(pilot, lambda: view.final is not None)
        note = text(view, "#mig-note")
        assert "crashed at osaka after the switch-over" in note
        assert note.endswith("the VM runs nowhere")
        assert "FAILED" in text(view, "#mig-title")


# --- the rate plot: the whole run, from the request to the resume, with its phases ---------


def test_plot_spans_a_finished_run_from_the_request_to_the_resume() -> None:
    run = constructed_run(seconds=6)  # samples at 1..6 s; resumed at 6.4 s, total 6.5 s
    assert plot_end(run, run) == run.total_s
    running = dataclasses.replace(run, phases=run.phases[:3], samples=run.samples[:2])
    assert plot_end(running, None) == 2.0  # while it runs: up to its latest sample
    assert plot_end(dataclasses.replace(run, phases=[], samples=[]), None) == 1.0


def test_phase_lines_mark_where_each_phase_began() -> None:
    marks = [PhaseMark(Phase.PREPARE, 0.0), PhaseMark(Phase.MAP, 0.3),
             PhaseMark(Phase.ITERATIVE, 0.9, 1), PhaseMark(Phase.ITERATIVE, 4.0, 2),
             PhaseMark(Phase.STOP_AND_COPY, 6.4), PhaseMark(Phase.RESUME, 7.0),
             PhaseMark(Phase.DONE, 14.9)]
    assert phase_lines(marks, 7.0) == [(0.3, "map"), (0.9, "iterative"),
                                       (6.4, "stop-and-copy"), (7.0, "resume")]


def spans(placed: list[tuple[float, str, int, bool]], end: float,
          columns: int) -> list[tuple[int, tuple[int, int]]]:
    out = []
    for t, name, row, right in placed:
        col = round(t / end * (columns - 1))
        out.append((row, (col - len(name), col - 1) if right else (col + 1, col + len(name))))
    return out


def test_phase_names_neither_overlap_nor_leave_the_plot() -> None:
    lines = [(0.3, "map"), (0.9, "iterative"), (6.4, "stop-and-copy"), (7.0, "resume")]
    for columns in (70, 36):
        placed = place_labels(lines, end=7.0, columns=columns)
        taken: dict[int, list[tuple[int, int]]] = {}
        for (row, span), name in zip(spans(placed, 7.0, columns), [p[1] for p in placed],
                                     strict=True):
            assert span[0] >= 0 and span[1] < columns, name
            assert all(span[1] < a or span[0] > b for a, b in taken.get(row, [])), name
            taken.setdefault(row, []).append(span)
    wide = place_labels(lines, end=7.0, columns=70)
    # Right of its line; left of it at the plot's end; "resume" crosses the line of
    # stop-and-copy (0.6 s before it) in the second row, clear of the first row's names.
    assert [(p[1], p[2], p[3]) for p in wide] == [
        ("map", 0, False), ("iterative", 0, False), ("stop-and-copy", 0, True),
        ("resume", 1, True)]
    crowded = [(1.0, "iterative"), (3.0, "iterative"), (5.0, "iterative")]
    assert len(place_labels(crowded, end=7.0, columns=30, rows=1)) == 1  # no room for more


async def test_finished_run_is_plotted_from_the_request_to_the_resume() -> None:
    # Issue 15: a finished 6.9 s run was plotted from its first sample to its last (1.88-3.88 s).
    run = constructed_run(seconds=6)
    app = create_app(ReplayBackend([run], speed=50), refresh_s=600)
    async with app.run_test(size=(120, 36)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, MigrationView))
        view = app.screen
        assert isinstance(view, MigrationView)
        await wait_for(pilot, lambda: view.final is not None, what="replay end")
        await pilot.pause(0.1)
        plot = view.query_one("#mig-rates", PlotextPlot).render().plain.splitlines()
        axis = next(i for i, line in enumerate(plot) if "└" in line)
        ticks = [float(x) for x in plot[axis + 1].split()]
        assert ticks[0] == 0.0 and ticks[-1] == pytest.approx(run.total_s, abs=0.01)
        assert "s since the request" in plot[axis + 2]
        canvas = "\n".join(plot[:axis])
        for name in ("map", "iterative", "stop-and-copy", "resume"):
            assert name in canvas
        legend = text(view, "#mig-rates-legend")
        assert "MiB/s" in legend and "guest" in legend and "WAN" in legend and "phases" in legend


def test_the_runs_time_against_t_min_and_the_prediction() -> None:
    from pcteleport.ui.migration_view import against_t_min

    assert against_t_min(7.0, 3.5, 6.0) == "2.0× T_min (3.5 s)  predicted 6.0 s"
    assert against_t_min(None, 3.5, None) == "T_min 3.5 s"
    assert against_t_min(7.0, None, 6.0) == ""  # no limit known: nothing to show


def test_t_min_comes_from_the_requests_measurement_until_the_record_has_it() -> None:
    from pcteleport.backend import MigrationRequest
    from pcteleport.predict import inputs_from_composition, keep_prediction, predict, t_min
    from pcteleport.records import Composition, Mode
    from pcteleport.ui.migration_view import tracked_t_min
    from pcteleport.ui.tracker import TrackedMigration

    inp = inputs_from_composition(Composition(total=2**30, free=2**29), 12.5e6, 50.0)
    m = TrackedMigration(MigrationRequest("u-web", "osaka", Mode.ZSTD, prediction_inputs=inp))
    assert tracked_t_min(m) == (t_min(inp), predict(inp, Mode.ZSTD).total_s)
    keep_prediction(m.record, inputs_from_composition(Composition(total=2**30), 12.5e6))
    assert m.record.t_min_s is not None and tracked_t_min(m)[0] == m.record.t_min_s
    bare = TrackedMigration(MigrationRequest("u-web", "osaka", Mode.ZSTD))
    assert tracked_t_min(bare) == (None, None)
