"""Migrate dialog: predictions per mode, cap parsing, start and cancel."""

from __future__ import annotations

import dataclasses

import pytest
from textual.widgets import DataTable, Input, Static

from pcteleport.backend import MigrationRequest
from pcteleport.records import Mode
from pcteleport.ui.app import create_app
from pcteleport.ui.main_screen import MainScreen, SitePane
from pcteleport.ui.migrate_dialog import MigrateDialog
from pcteleport.ui.migration_view import MigrationView
from tests.ui.conftest import wait_for
from tests.ui.fake_backend import FakeBackend, populated_backend


async def open_dialog(pilot, app) -> MigrateDialog:  # type: ignore[no-untyped-def]
    await wait_for(pilot, lambda: any(p.ready and p.table.row_count == 3
                                      for p in app.screen.query(SitePane)))
    tokyo = next(p for p in app.screen.query(SitePane) if p.site.name == "tokyo")
    tokyo.table.focus()
    await pilot.press("down", "down", "m")  # web
    await wait_for(pilot, lambda: isinstance(app.screen, MigrateDialog))
    return app.screen  # type: ignore[return-value]


async def measured_dialog(pilot, app) -> MigrateDialog:  # type: ignore[no-untyped-def]
    dialog = await open_dialog(pilot, app)
    await wait_for(pilot, lambda: dialog.inputs is not None, what="the measurement")
    return dialog


def prediction_rows(dialog: MigrateDialog) -> list[list[str]]:
    table = dialog.query_one("#predictions", DataTable)
    return [[str(c) for c in table.get_row(k)] for k in table.rows]


async def test_predictions_for_every_mode_and_teleport_preselected() -> None:
    app = create_app(populated_backend(), refresh_s=60)
    async with app.run_test(size=(100, 30)) as pilot:
        dialog = await open_dialog(pilot, app)
        rows = prediction_rows(dialog)
        assert [r[0] for r in rows] == ["stock", "drop-cache", "zstd", "teleport"]
        assert dialog.mode() is Mode.TELEPORT and dialog.destination() == "osaka"
        assert "×" in rows[3][1] and rows[3][2].endswith(" s")
        before = rows[0][2]
        dialog.query_one("#cap", Input).focus()
        await pilot.press("1", "0", "M")  # 10 Mbit/s: slower than the 94 Mbit/s link
        assert "cap 10.0 Mbit/s" in str(dialog.query_one("#cap-error", Static).render())
        assert prediction_rows(dialog)[0][2] != before


async def test_a_bad_cap_is_explained_and_does_not_start() -> None:
    backend = populated_backend()
    app = create_app(backend, refresh_s=60)
    async with app.run_test(size=(100, 30)) as pilot:
        dialog = await open_dialog(pilot, app)
        dialog.query_one("#cap", Input).focus()
        await pilot.press("f", "a", "s", "t", "enter")
        assert "not a rate" in str(dialog.query_one("#cap-error", Static).render())
        assert isinstance(app.screen, MigrateDialog) and backend.requests == []


async def test_start_sends_the_chosen_request_and_opens_the_migration_view() -> None:
    backend = populated_backend()
    app = create_app(backend, refresh_s=60)
    async with app.run_test(size=(100, 30)) as pilot:
        dialog = await measured_dialog(pilot, app)
        await pilot.press("2")  # drop-cache
        assert dialog.mode() is Mode.DROP_CACHE
        dialog.query_one("#cap", Input).focus()
        await pilot.press("5", "0", "M", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, MigrationView))
        await wait_for(pilot, lambda: backend.requests, what="migrate called")
        (request,) = backend.requests
        assert dataclasses.replace(request, prediction_inputs=None) == \
            MigrationRequest("u-web", "osaka", Mode.DROP_CACHE, 50e6 / 8)
        # the measurement the dialog showed goes with the request, with the cap chosen
        assert request.prediction_inputs is not None
        assert request.prediction_inputs.cap_bytes_per_s == 50e6 / 8
        assert request.prediction_inputs.zstd_ratio is not None


async def test_the_dialog_measures_the_guest_when_it_opens_and_shows_t_min() -> None:
    backend = populated_backend()
    app = create_app(backend, refresh_s=60)
    async with app.run_test(size=(100, 30)) as pilot:
        dialog = await measured_dialog(pilot, app)
        assert "prediction:u-web:osaka" in backend.calls
        note = str(dialog.query_one("#prediction-note", Static).render())
        assert "fresh measurement" in note and "T_min" in note
        rows = prediction_rows(dialog)
        # every mode's time against the limit, none below it
        assert all(r[3].endswith("×") and float(r[3][:-1]) >= 1.0 for r in rows)


async def test_a_sampled_dirty_rate_is_said_beside_the_prediction() -> None:
    """Page sampling misses rewrites of the same bytes (a TCG guest, where QEMU's bitmap mode
    reads 0): the note says so; a bitmap reading needs no word."""
    for method, said in (("page-sampling", True), ("dirty-bitmap", False)):
        backend = populated_backend()
        backend.dirty_rate_method = method
        app = create_app(backend, refresh_s=60)
        async with app.run_test(size=(120, 30)) as pilot:
            dialog = await measured_dialog(pilot, app)
            note = str(dialog.query_one("#prediction-note", Static).render())
            assert ("dirty rate sampled: may converge later" in note) is said, note


async def test_escape_cancels() -> None:
    backend = populated_backend()
    app = create_app(backend, refresh_s=60)
    async with app.run_test(size=(100, 30)) as pilot:
        await open_dialog(pilot, app)
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen) and backend.requests == []


async def test_without_a_composition_there_is_no_prediction() -> None:
    backend: FakeBackend = populated_backend()
    backend.agent_down.add("u-web")
    app = create_app(backend, refresh_s=60)
    async with app.run_test(size=(100, 30)) as pilot:
        dialog = await open_dialog(pilot, app)
        assert "no prediction" in prediction_rows(dialog)[0][0]


async def test_arrow_keys_start_from_the_chosen_mode() -> None:
    app = create_app(populated_backend(), refresh_s=60)
    async with app.run_test(size=(100, 30)) as pilot:
        dialog = await open_dialog(pilot, app)
        await pilot.press("left", "enter")  # one step left of teleport
        assert dialog.mode() is Mode.ZSTD


@pytest.mark.parametrize(("qemu", "warned"), [("7.2.22", True), ("10.0.2", False)])
async def test_a_tcg_guest_on_qemu_before_9_is_warned_about_before_it_starts(
        qemu: str, warned: bool) -> None:
    """The dialog names the engine's bug in one line; starting after seeing it forces."""
    backend = populated_backend()
    for site in backend.sites_list:
        site.qemu_version = qemu
    for vm in backend.vms_by_site["tokyo"]:
        vm.tcg = True
    app = create_app(backend, refresh_s=60)
    async with app.run_test(size=(100, 34)) as pilot:
        dialog = await open_dialog(pilot, app)
        if warned:
            warning = str(dialog.query_one("#engine-warning", Static).render())
            assert f"QEMU {qemu} at tokyo loses dirty pages when it migrates a TCG guest" \
                in warning
        else:
            assert not dialog.query("#engine-warning")
        assert str(dialog.query_one("#start").label) == ("Start anyway" if warned else "Start")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: backend.requests, what="migrate called")
        assert backend.requests[0].force is warned
