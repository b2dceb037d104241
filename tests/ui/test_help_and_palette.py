"""The `?` overlay and the command palette."""

from __future__ import annotations

import io

from rich.console import Console
from textual.command import CommandPalette

from pcteleport.ui.app import create_app
from pcteleport.ui.compare_screen import CompareScreen
from pcteleport.ui.help_screen import HelpScreen
from pcteleport.ui.main_screen import MainScreen
from tests.ui.conftest import wait_for
from tests.ui.fake_backend import populated_backend


async def test_question_mark_opens_help_and_escape_closes_it() -> None:
    app = create_app(populated_backend(), refresh_s=60)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.05)
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        console = Console(width=100, record=True, file=io.StringIO())
        console.print(app.screen.table)
        keys = console.export_text()
        for key in ("ctrl+p", "space", "abort", "export", "1 2 3 4"):
            assert key in keys
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen)


async def test_palette_runs_console_commands() -> None:
    app = create_app(populated_backend(), refresh_s=60)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.05)
        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette))
        await pilot.press(*"compare runs")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen), what="compare")
        await pilot.press("escape")
        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette))
        await pilot.press(*"pause or resume")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.paused, what="paused from the palette")


async def test_palette_offers_the_shown_screens_own_commands() -> None:
    app = create_app(populated_backend(), refresh_s=60)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.05)
        assert app.screen.sort_by == "name"
        await pilot.press("ctrl+p")
        await wait_for(pilot, lambda: isinstance(app.screen, CommandPalette))
        await pilot.press(*"sort vms")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, MainScreen)
                       and app.screen.sort_by == "state", what="sorted from the palette")
