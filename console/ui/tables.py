"""The console's tables: Textual's DataTable, drawn again whenever it has measured its rows."""

from __future__ import annotations

from textual import events
from textual.widgets import DataTable
from textual.widgets.data_table import CellType


class ConsoleTable(DataTable[CellType]):
    """A DataTable measures new rows' columns when it is next idle, and caches each drawn row
    and cell under a key without the widths. A row drawn before that measure (a loaded
    machine, a theme change in between) kept the headers' widths ("runni" under "state")
    until something else changed the key: a Resize usually, not always. Measuring changes
    the key here."""

    async def _on_idle(self, event: events.Idle) -> None:
        widths = [c.get_render_width(self) for c in self.ordered_columns]
        await super()._on_idle(event)
        event.prevent_default()  # done: Textual would call DataTable's handler again
        if widths != [c.get_render_width(self) for c in self.ordered_columns]:
            self._update_count += 1  # in every row and cell cache key (as a Resize does)
            self.refresh()
