"""The base of the console's full screens: the commands a screen adds to the palette (ctrl+p)
while it is shown, so the App asks the screen for them instead of looking for attributes."""

from __future__ import annotations

from collections.abc import Iterable

from textual.app import SystemCommand
from textual.screen import Screen


class ConsoleScreen(Screen[None]):
    def commands_here(self) -> Iterable[SystemCommand]:
        """Palette commands of this screen, on top of the App's own."""
        return ()
