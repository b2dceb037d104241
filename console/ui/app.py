"""The console app and its factory (tests, screenshots and the CLI all build it the same way).

The App owns what outlives a screen: the backend, the polling settings every poll schedule
watches (`refresh_s`, `paused`), and the MigrationTracker. Screens get what they show as
arguments and through the tracker's messages; the App never reaches into a screen."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from textual import on
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.reactive import reactive
from textual.screen import Screen

from pcteleport.backend import Backend
from pcteleport.ui.console_screen import ConsoleScreen
from pcteleport.ui.messages import (
    AbortFailed,
    MigrationCouldNotStart,
    MigrationFinished,
    MigrationProgress,
    MigrationTargetFound,
)
from pcteleport.ui.svg_export import legible_svg
from pcteleport.ui.tracker import MigrationTracker

REFRESH_STEPS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


class PcteleportApp(App[None]):
    CSS_PATH = "pcteleport.tcss"
    TITLE = "pcteleport"
    BINDINGS = [
        Binding("question_mark", "help", "Help"),
        Binding("c", "compare", "Compare"),
        Binding("plus", "faster", "+Refresh", show=False),
        Binding("minus", "slower", "-Refresh", show=False),
        Binding("space", "toggle_pause", "Pause"),
        Binding("q", "quit", "Quit"),
    ]

    refresh_s: reactive[float] = reactive(2.0, init=False)
    paused: reactive[bool] = reactive(False, init=False)

    def __init__(self, backend: Backend, *, refresh_s: float = 2.0,
                 export_dir: Path | None = None, autoplay: bool = True) -> None:
        super().__init__()
        self.backend = backend
        self.export_dir = export_dir if export_dir is not None else Path.cwd()
        self._autoplay = autoplay
        self.tracker = MigrationTracker(self, backend)
        self.set_reactive(PcteleportApp.refresh_s, refresh_s)
        self.sub_title = backend.title

    def on_mount(self) -> None:
        from pcteleport.ui.main_screen import MainScreen

        self.push_screen(MainScreen(self.tracker))
        request = self.backend.autoplay() if self._autoplay else None
        if request is not None:
            from pcteleport.ui.migration_view import MigrationView

            self.push_screen(MigrationView(self.tracker.start(request), self.tracker))

    def export_screenshot(self, *, title: str | None = None, simplify: bool = False) -> str:
        """Textual's SVG screenshot (screenshots, snapshots, the palette's "Save screenshot"),
        with every word where the terminal shows it in any SVG viewer (svg_export.py)."""
        return legible_svg(super().export_screenshot(title=title, simplify=simplify))

    # --- migration workers report here; the tracker keeps what they say --------------------

    @on(MigrationTargetFound)
    def _target_found(self, message: MigrationTargetFound) -> None:
        self.tracker.target_found(message)

    @on(MigrationProgress)
    def _progress(self, message: MigrationProgress) -> None:
        self.tracker.progress(message)

    @on(MigrationFinished)
    def _finished(self, message: MigrationFinished) -> None:
        self.tracker.finished(message)

    @on(MigrationCouldNotStart)
    def _could_not_start(self, message: MigrationCouldNotStart) -> None:
        self.tracker.could_not_start(message)

    @on(AbortFailed)
    def _abort_failed(self, message: AbortFailed) -> None:
        self.tracker.abort_failed(message)

    # --- app-wide actions ------------------------------------------------------------------

    def action_help(self) -> None:
        from pcteleport.ui.help_screen import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_compare(self) -> None:
        from pcteleport.ui.compare_screen import CompareScreen

        if not isinstance(self.screen, CompareScreen):
            self.push_screen(CompareScreen())

    async def action_quit(self) -> None:
        from pcteleport.ui.confirm import ConfirmScreen

        if not self.tracker.running():
            self.exit()
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self.exit()

        self.push_screen(ConfirmScreen(
            "A migration is running. Quit the console anyway?",
            "The console drives it (libvirt's client-managed migration): it closes once the "
            "migration has ended. To stop it now, answer n and abort it with a."),
            callback=answer)

    def action_faster(self) -> None:
        slower = [s for s in REFRESH_STEPS if s < self.refresh_s]
        self.refresh_s = slower[-1] if slower else REFRESH_STEPS[0]

    def action_slower(self) -> None:
        faster = [s for s in REFRESH_STEPS if s > self.refresh_s]
        self.refresh_s = faster[0] if faster else REFRESH_STEPS[-1]

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused

    # Screens and poll schedules watch `refresh_s` and `paused` themselves (polling.py).

    def watch_refresh_s(self, value: float) -> None:
        if self.is_mounted:
            self.notify(f"refreshing every {value:g} s", timeout=2)

    def watch_paused(self, paused: bool) -> None:
        if self.is_mounted:
            self.notify("polling paused (space resumes)" if paused else "polling resumed",
                        timeout=2)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Compare runs", "Recorded runs side by side", self.action_compare)
        yield SystemCommand("Help", "Keys of every screen", self.action_help)
        yield SystemCommand("Pause or resume polling", "Stop or restart refreshing",
                            self.action_toggle_pause)
        yield SystemCommand("Refresh faster", "Shorter refresh interval", self.action_faster)
        yield SystemCommand("Refresh slower", "Longer refresh interval", self.action_slower)
        if isinstance(screen, ConsoleScreen):
            yield from screen.commands_here()


def create_app(backend: Backend, **kwargs: object) -> PcteleportApp:
    """The one way to build the console: tests, screenshots and `pcteleport` use it."""
    return PcteleportApp(backend, **kwargs)  # type: ignore[arg-type]
