"""`pcteleport replay`: the console opens straight into the recorded migration."""

from __future__ import annotations

from textual.widgets import DataTable

from pcteleport.records import Result
from pcteleport.sites.replay import ReplayBackend
from pcteleport.ui.app import create_app
from pcteleport.ui.compare_screen import CompareScreen
from pcteleport.ui.main_screen import MainScreen, SitePane
from pcteleport.ui.migration_view import MigrationView
from tests.record_factory import constructed_run
from tests.ui.conftest import wait_for


async def test_replay_plays_the_run_then_the_vm_is_at_the_destination() -> None:
    run = constructed_run(seconds=3)
    app = create_app(ReplayBackend([run], speed=50), refresh_s=0.1)
    async with app.run_test(size=(100, 32)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, MigrationView))
        view = app.screen
        await wait_for(pilot, lambda: view.final is not None, what="replay end")
        assert view.final.result is Result.OK
        assert view.builder.record.samples == run.samples
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen)
        osaka = lambda: next(p for p in app.screen.query(SitePane)  # noqa: E731
                             if p.site.name == "osaka")
        await wait_for(pilot, lambda: osaka().table.row_count == 1, what="VM at osaka")
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen))
        await wait_for(pilot, lambda: app.screen.query_one("#cmp-table", DataTable).row_count)
