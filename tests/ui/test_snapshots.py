"""SVG snapshots of every screen at 80×24 and at 160×48 (`make snapshots` updates them).

They catch layout regressions a pilot test would not notice; review a changed SVG in
snapshot_report.html before accepting it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable

from pcteleport.backend import MigrationRequest
from pcteleport.records import ConnectionState, Mode, Site
from pcteleport.ui.app import PcteleportApp, create_app
from pcteleport.ui.compare_screen import CompareScreen
from pcteleport.ui.main_screen import SitePane
from pcteleport.ui.migration_view import MigrationView
from tests.record_factory import MIB, constructed_run
from tests.ui.conftest import steady, wait_for
from tests.ui.fake_backend import FakeBackend, populated_backend

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((160, 48), id="160x48")]


@pytest.fixture(autouse=True)
def _utc(monkeypatch: pytest.MonkeyPatch) -> Any:
    # The compare screen shows local times: pin the zone so snapshots match on any machine.
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture(autouse=True)
def _toasts_stay(monkeypatch: pytest.MonkeyPatch) -> None:
    # A toast lasts seconds (migration ok: 4 s); on a loaded machine the picture was taken
    # after it had gone. The snapshots show it as an operator sees it when it comes.
    notify = PcteleportApp.notify

    def lasting(self: PcteleportApp, message: str, **kwargs: Any) -> None:
        notify(self, message, **{**kwargs, "timeout": 600})

    monkeypatch.setattr(PcteleportApp, "notify", lasting)


def backend() -> FakeBackend:
    b = populated_backend()
    b.stored = [
        constructed_run(Mode.STOCK, run_id="s1", seconds=10, wan_bytes=910 * MIB),
        constructed_run(Mode.ZSTD, run_id="z1", seconds=6, wan_bytes=420 * MIB),
        constructed_run(Mode.DROP_CACHE, run_id="d1", seconds=4, wan_bytes=270 * MIB,
                        throughput=1100.0),
        constructed_run(Mode.TELEPORT, run_id="t1", seconds=3, wan_bytes=300 * MIB),
    ]
    return b


async def loaded(pilot: Pilot) -> None:
    app = pilot.app
    await wait_for(pilot, lambda: sum(p.table.row_count for p in app.screen.query(SitePane)
                                      if p.ready) == 4)
    await wait_for(pilot, lambda: isinstance(app.focused, DataTable), what="a table's focus")
    # a table sizes its columns to new rows when idle: on a loaded machine a snapshot caught
    # them at their old widths ("runni", "1.0 Gi")
    await wait_for(pilot, lambda: not any(getattr(t, "_require_update_dimensions", False)
                                          for t in app.screen.query(DataTable)),
                   what="the tables' column widths")
    await steady(pilot)


def then(*keys: str, until: Callable[[Pilot], bool] | None = None) -> Callable[[Pilot], Any]:
    async def run(pilot: Pilot) -> None:
        await loaded(pilot)
        await pilot.press(*keys)
        if until is not None:
            await wait_for(pilot, lambda: until(pilot))
        await steady(pilot)

    return run


@pytest.mark.parametrize("size", SIZES)
def test_main_screen(snap_compare: Any, size: tuple[int, int]) -> None:
    assert snap_compare(create_app(backend(), refresh_s=600), terminal_size=size,
                        run_before=then())


@pytest.mark.parametrize("size", SIZES)
def test_vm_detail(snap_compare: Any, size: tuple[int, int]) -> None:
    def replicas_checked(pilot: Pilot) -> bool:
        return any(c.startswith("replicas:") for c in pilot.app.backend.calls)

    assert snap_compare(create_app(backend(), refresh_s=600), terminal_size=size,
                        run_before=then("down", "down", "enter", until=replicas_checked))


def measured(pilot: Pilot) -> bool:
    # the dialog shows the prediction from its own measurement, not the composition's
    return getattr(pilot.app.screen, "inputs", None) is not None


@pytest.mark.parametrize("size", SIZES)
def test_migrate_dialog(snap_compare: Any, size: tuple[int, int]) -> None:
    assert snap_compare(create_app(backend(), refresh_s=600), terminal_size=size,
                        run_before=then("down", "down", "m", until=measured))


def test_migrate_dialog_warns_of_qemu_72_with_a_tcg_guest(snap_compare: Any) -> None:
    b = backend()
    for site in b.sites_list:
        site.qemu_version = "7.2.22"
    for vm in b.vms_by_site["tokyo"]:
        vm.tcg = True
    assert snap_compare(create_app(b, refresh_s=600), terminal_size=(100, 34),
                        run_before=then("down", "down", "m", until=measured))


@pytest.mark.parametrize("size", SIZES)
def test_migration_view_finished(snap_compare: Any, size: tuple[int, int]) -> None:
    app = create_app(backend(), refresh_s=600)

    async def run(pilot: Pilot) -> None:
        await loaded(pilot)
        request = MigrationRequest("u-web", "osaka", Mode.TELEPORT)
        view = MigrationView(app.tracker.start(request), app.tracker)
        await app.push_screen(view)
        await wait_for(pilot, lambda: view.final is not None)
        await steady(pilot)

    assert snap_compare(app, terminal_size=size, run_before=run)


@pytest.mark.parametrize("size", SIZES)
def test_compare_screen(snap_compare: Any, size: tuple[int, int]) -> None:
    def ready(pilot: Pilot) -> bool:
        return isinstance(pilot.app.screen, CompareScreen) and bool(pilot.app.screen.records)

    assert snap_compare(create_app(backend(), refresh_s=600), terminal_size=size,
                        run_before=then("c", until=ready))


def test_help_overlay(snap_compare: Any) -> None:
    assert snap_compare(create_app(backend(), refresh_s=600), terminal_size=(80, 24),
                        run_before=then("question_mark"))




def test_main_screen_light_theme(snap_compare: Any) -> None:
    app = create_app(backend(), refresh_s=600)

    async def run(pilot: Pilot) -> None:
        app.theme = "textual-light"
        await loaded(pilot)

    assert snap_compare(app, terminal_size=(120, 30), run_before=run)


def test_three_sites_wrap_into_rows(snap_compare: Any) -> None:
    b = backend()
    b.sites_list.append(Site("paris", "10.77.0.3", "9.0.0", ConnectionState.ERROR,
                             error="paris: SSH refused the lab key: run `pcteleport lab up`"))
    b.vms_by_site["paris"] = []
    assert snap_compare(create_app(b, refresh_s=600), terminal_size=(160, 48),
                        run_before=then())
