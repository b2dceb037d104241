"""VM detail: composition, history, disks and replicas, agent errors."""

from __future__ import annotations

import dataclasses

from textual.widgets import DataTable, Static
from textual_plotext import PlotextPlot

from pcteleport.records import Replica, ReplicaState
from pcteleport.ui.app import create_app
from pcteleport.ui.main_screen import MainScreen, SitePane
from pcteleport.ui.vm_detail import VMDetailScreen
from tests.ui.conftest import wait_for
from tests.ui.fake_backend import populated_backend


async def open_detail(pilot, app, row: int = 2) -> VMDetailScreen:  # type: ignore[no-untyped-def]
    await wait_for(pilot, lambda: any(p.ready and p.table.row_count == 3
                                      for p in app.screen.query(SitePane)))
    tokyo = next(p for p in app.screen.query(SitePane) if p.site.name == "tokyo")
    tokyo.table.focus()
    for _ in range(row):
        await pilot.press("down")
    await pilot.press("enter")
    await wait_for(pilot, lambda: isinstance(app.screen, VMDetailScreen))
    return app.screen  # type: ignore[return-value]


async def test_detail_shows_composition_disks_and_replicas() -> None:
    backend = populated_backend()
    web = next(v for v in backend.vms_by_site["tokyo"] if v.name == "web")
    web.disks[0].replicas = [Replica("osaka", ReplicaState.DIFFERS,
                                     "block 1234 differs: re-sync it or migrate without teleport")]
    app = create_app(backend, refresh_s=60)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_detail(pilot, app)
        assert screen.vm.name == "web"
        title = str(screen.query_one("#vm-title", Static).render())
        assert "web" in title and "u-web" in title and "tokyo" in title
        numbers = screen.query_one("#vm-numbers", Static).render()
        assert "restorable" in str(screen.query_one("#vm-bar", Static).render())
        assert numbers is not None
        disks = screen.query_one("#vm-disks", DataTable)
        await wait_for(pilot, lambda: "replicas:u-web" in backend.calls, what="replica check")
        await pilot.pause(0.1)
        row = [str(c) for c in disks.get_row("vdb")]
        assert row[1] == "4.0 GiB" and row[2] == "source (live)"
        assert row[3].startswith("differs: block 1234")
        assert "no errors" in str(screen.query_one("#vm-agent", Static).render())
        # The replica check reports its own failure without hiding the disks.
        backend.vms_by_site["tokyo"].remove(web)
        await pilot.press("r")
        await wait_for(pilot, lambda: "no VM u-web" in str(
            screen.query_one("#vm-disks-note", Static).render()), what="replica error")
        assert disks.row_count == 1
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen)


async def test_detail_polls_and_shows_the_agents_error() -> None:
    backend = populated_backend()
    app = create_app(backend, refresh_s=0.05)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_detail(pilot, app)
        base = backend.compositions["u-web"]
        backend.compositions["u-web"] = dataclasses.replace(
            base, restorable=0, error="module not loaded: using /proc/meminfo",
            taken_at=base.taken_at + 5)
        await wait_for(pilot, lambda: len(screen.history) >= 2, what="second reading")
        assert [x for x, _ in screen.history][:2] == [0.0, 5.0]
        agent = str(screen.query_one("#vm-agent", Static).render())
        assert "module not loaded" in agent
        backend.agent_down.add("u-web")
        await wait_for(pilot, lambda: screen.error is not None, what="agent down")
        assert "does not answer" in str(screen.query_one("#vm-agent", Static).render())


async def test_detail_polls_wait_while_paused_and_resume_after() -> None:
    backend = populated_backend()
    app = create_app(backend, refresh_s=0.05)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = await open_detail(pilot, app)
        await pilot.press("space")
        await pilot.pause(0.3)  # a poll in flight when paused may still land
        readings = len(screen.history)
        base = backend.compositions["u-web"]
        backend.compositions["u-web"] = dataclasses.replace(base, taken_at=base.taken_at + 5)
        await pilot.pause(0.4)
        assert len(screen.history) == readings  # paused: the new reading is not asked for
        await pilot.press("space")
        await wait_for(pilot, lambda: len(screen.history) == readings + 1, what="polls resume")


async def test_history_plot_says_it_waits_for_a_second_reading_then_draws_lines() -> None:
    # One reading has no line to draw: an axis from -1 to 1 s around a dot read as nothing.
    backend = populated_backend()
    app = create_app(backend, refresh_s=0.05)
    async with app.run_test(size=(120, 40)) as pilot:
        app.paused = True
        screen = await open_detail(pilot, app)
        await pilot.pause(0.1)

        def plot() -> str:
            return screen.query_one("#vm-history", PlotextPlot).render().plain

        assert len(screen.history) == 1
        assert "one reading so far" in plot() and "-1" not in plot()
        legend = str(screen.query_one("#vm-history-legend", Static).render())
        assert all(name in legend for name in ("MiB", "restorable", "clean", "anon", "free"))
        base = backend.compositions["u-web"]
        backend.compositions["u-web"] = dataclasses.replace(base, taken_at=base.taken_at + 5)
        app.paused = False
        await wait_for(pilot, lambda: len(screen.history) >= 2, what="second reading")
        await pilot.pause(0.1)
        assert "one reading so far" not in plot()
        assert "s since the first reading" in plot()
