"""The App's migration tracker: a migration belongs to the App, not to the screen that started
it; its view only shows it (closing it changes nothing, reopening shows the live state), and
every screen that shows a migration reads the same tracked state."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from textual.pilot import Pilot
from textual.widgets import ProgressBar, RichLog, Static

from pcteleport.records import Result
from pcteleport.ui.app import PcteleportApp, create_app
from pcteleport.ui.confirm import ConfirmScreen
from pcteleport.ui.main_screen import MainScreen, SitePane
from pcteleport.ui.migrate_dialog import MigrateDialog
from pcteleport.ui.migration_view import MigrationView
from pcteleport.ui.tracker import TrackedMigration
from pcteleport.ui.vm_detail import VMDetailScreen
from tests.ui.conftest import wait_for
from tests.ui.fake_backend import FakeBackend, populated_backend
from tests.ui.test_migration_view import select


@asynccontextmanager
async def console(backend: FakeBackend) -> AsyncIterator[tuple[PcteleportApp, Pilot]]:
    app = create_app(backend, refresh_s=60)
    async with app.run_test(size=(120, 36)) as pilot:
        try:
            yield app, pilot
        finally:
            # A failed assertion must not leave a step-by-step migration blocking the exit.
            backend.release(1000)


def text(screen, selector: str) -> str:  # type: ignore[no-untyped-def]
    return str(screen.query_one(selector, Static).render())


async def migrate_from_the_dialog(pilot, app, uuid: str = "u-web") -> MigrationView:  # type: ignore[no-untyped-def]
    """Select the VM on the main screen, m, start with the dialog's defaults (teleport)."""
    main = app.screen
    assert isinstance(main, MainScreen)
    await wait_for(pilot, lambda: all(p.ready and p.table.row_count
                                      for p in main.query(SitePane)), what="sites loaded")
    await select(pilot, main, uuid)
    await pilot.press("m")
    await wait_for(pilot, lambda: isinstance(app.screen, MigrateDialog))
    await pilot.press("ctrl+s")
    await wait_for(pilot, lambda: isinstance(app.screen, MigrationView), what="its view")
    return app.screen  # type: ignore[return-value]


def strip(main: MainScreen) -> str:
    box = main.query_one("#migrations", Static)
    return str(box.render()) if box.has_class("-visible") else ""


async def test_a_migration_goes_on_and_completes_when_its_view_is_closed() -> None:
    backend = populated_backend(step_by_step=True)
    async with console(backend) as (app, pilot):
        main = app.screen
        assert strip(main) == ""  # nothing tracked: no strip (the snapshots show none)
        view = await migrate_from_the_dialog(pilot, app)
        migration = view.migration
        backend.release(5)
        await wait_for(pilot, lambda: len(migration.record.samples) == 1)
        await pilot.press("escape")
        assert app.screen is main and not view.is_attached
        # The main screen lists it, running, with what the view would show.
        await wait_for(pilot, lambda: "⇄ web  tokyo → osaka  teleport  32%" in strip(main),
                       what="the running migration on the main screen")
        assert "watch it" in strip(main)
        backend.release(100)
        await wait_for(pilot, lambda: migration.final is not None, what="the end, unwatched")
        assert migration.final.result is Result.OK
        assert [r.run_id for r in backend.stored] == [migration.final.run_id]
        await wait_for(pilot, lambda: " OK " in strip(main), what="its end on the main screen")
        assert "in 6.5 s" in strip(main) and "see how it ended" in strip(main)
        # Its end unseen, Enter shows the run; after that Enter shows the VM, whose detail
        # names its last migration, and the strip is gone.
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, MigrationView))
        assert app.screen.migration is migration
        await pilot.press("escape")
        assert strip(main) == ""
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, VMDetailScreen))
        detail = app.screen
        line = text(detail, "#vm-migration")
        assert line.startswith("last migration: web  tokyo → osaka  teleport   OK ")
        assert "in 6.5 s" in line and "downtime 287 ms" in line


async def test_reopening_the_view_shows_the_live_progress() -> None:
    backend = populated_backend(step_by_step=True)
    async with console(backend) as (app, pilot):
        main = app.screen
        first = await migrate_from_the_dialog(pilot, app)
        migration = first.migration
        backend.release(5)  # up to the first sample: 700 MiB left
        await wait_for(pilot, lambda: len(migration.record.samples) == 1)
        await pilot.press("escape")
        backend.release(4)  # two more samples, the remainder grew: reported while unwatched
        await wait_for(pilot, lambda: len(migration.record.samples) == 3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, MigrationView))
        view = app.screen
        assert view is not first and view.migration is migration
        bar = view.query_one(ProgressBar)
        assert bar.progress == round(migration.progress_high * 100, 1) and bar.progress > 60
        note = text(view, "#mig-note")
        assert "dirtied memory faster" in note and "450.0 MiB left" in note
        assert "iterative #2" in text(view, "#mig-phases")
        assert "30,000" in text(view, "#mig-counters")
        log = [str(line.text) for line in view.query_one(RichLog).lines]
        assert log[0] == "2025-11-24 16:00:00 starting migration" and len(log) == 3
        # ...and it goes on live in the reopened view.
        backend.release(2)  # log line, sample: 60 MiB left
        await wait_for(pilot, lambda: len(migration.record.samples) == 4)
        await wait_for(pilot, lambda: bar.progress > 90, what="the bar moving on")
        backend.release(100)
        await wait_for(pilot, lambda: "OK" in text(view, "#mig-title"), what="the end, watched")
        assert bar.progress == 100 and migration.end_seen
        assert str(view.query_one(RichLog).lines[-1].text).endswith("finished successfully")
        await pilot.press("escape")
        assert app.screen is main and strip(main) == ""


async def test_two_screens_see_the_same_tracker_state() -> None:
    """The main screen (under the view) and the view follow one TrackedMigration; a second
    migration runs beside it; the VM detail reads the same object."""
    backend = populated_backend(step_by_step=True)
    async with console(backend) as (app, pilot):
        main = app.screen
        view = await migrate_from_the_dialog(pilot, app)
        migration = view.migration
        backend.release(5)
        await wait_for(pilot, lambda: len(migration.record.samples) == 1)
        # The main screen is under the view and still hears every change.
        await wait_for(pilot, lambda: "32%" in strip(main), what="main screen in step")
        assert f"{view.query_one(ProgressBar).progress:.0f}%" in strip(main)
        await pilot.press("escape")
        # A second migration, of another VM, while the first runs; the first cannot start twice.
        other = await migrate_from_the_dialog(pilot, app, "u-tpcc")
        assert other.migration is not migration
        await pilot.press("escape")
        await select(pilot, main, "u-web")
        await pilot.press("m")
        await wait_for(pilot, lambda: isinstance(app.screen, MigrateDialog))
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is main)
        assert len(backend.requests) == 2 and len(app.tracker.running()) == 2
        lines = strip(main).splitlines()
        assert [line.split()[1] for line in lines] == ["web", "tpcc"]
        tracked: list[TrackedMigration] = app.tracker.migrations()
        assert tracked == [migration, other.migration]
        # Quitting asks while either runs.
        await pilot.press("q")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        backend.release(200)
        await wait_for(pilot, lambda: not app.tracker.running(), what="both ended")
        await wait_for(pilot, lambda: strip(main).count(" OK ") == 2)


async def test_abort_from_the_main_screen_of_a_migration_this_console_runs() -> None:
    backend = populated_backend(step_by_step=True)
    async with console(backend) as (app, pilot):
        main = app.screen
        view = await migrate_from_the_dialog(pilot, app)
        migration = view.migration
        backend.release(2)
        await wait_for(pilot, lambda: migration.record.phases)
        await pilot.press("escape")
        await select(pilot, main, "u-web")
        await pilot.press("a")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await wait_for(pilot, lambda: migration.final is not None, what="aborted")
        assert backend.aborted == ["u-web"] and migration.final.result is Result.ABORTED
        assert any(e.console and "abort requested by the operator" in e.text
                   for e in migration.lines)
        assert " ABORTED " in strip(main)


async def test_a_migration_started_from_the_detail_takes_its_place() -> None:
    backend = populated_backend()
    async with console(backend) as (app, pilot):
        main = app.screen
        await select(pilot, main, "u-web")
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, VMDetailScreen))
        detail = app.screen
        assert not detail.query_one("#vm-migration").has_class("-visible")  # none yet
        await pilot.press("m")
        await wait_for(pilot, lambda: isinstance(app.screen, MigrateDialog))
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, MigrationView))
        view = app.screen
        assert detail not in app.screen_stack
        await wait_for(pilot, lambda: view.final is not None)
        await pilot.press("escape")
        assert app.screen is main and app.tracker.latest("u-web") is view.migration
