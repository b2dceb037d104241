"""The `?` overlay: every key, by screen."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("everywhere", (
        ("?", "this help"),
        ("ctrl+p", "command palette (also: theme, dark/light)"),
        ("c", "compare recorded runs"),
        ("+ / -", "refresh faster / slower"),
        ("space", "pause / resume polling"),
        ("q", "quit"),
    )),
    ("sites", (
        ("↑ ↓  tab", "move in a table, next site"),
        ("enter", "VM details, or its migration if one was left running"),
        ("m", "migrate the selected VM"),
        ("a", "abort the selected VM's migration (asks first)"),
        ("/", "filter VMs by name (esc clears)"),
        ("s", "cycle sort: name, state, memory, restorable"),
        ("r", "refresh now"),
    )),
    ("migrate dialog", (
        ("1 2 3 4", "stock, drop-cache, zstd, teleport"),
        ("← →  space", "move between modes, choose one"),
        ("tab", "destination, cap, buttons"),
        ("ctrl+s / enter", "start"),
        ("esc", "cancel"),
    )),
    ("migration", (
        ("a", "abort (asks first; the source keeps running)"),
        ("esc", "back to the list (a running migration goes on)"),
    )),
    ("compare", (
        ("v / o", "filter by VM / by mode"),
        ("g", "cycle the charted metric"),
        ("e", "export CSV and Markdown"),
        ("esc", "back"),
    )),
)


def help_table() -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    for section, keys in KEYS:
        table.add_row(Text(section.upper(), style="bold underline"), "")
        for key, what in keys:
            table.add_row(f"  {key}", what)
    return table


class HelpScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape", "dismiss", "Close"),
        Binding("question_mark", "dismiss", "Close", show=False),
        Binding("q", "dismiss", "Close", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.table = help_table()

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Static(self.table, id="help-keys")

    async def action_dismiss(self, result: None = None) -> None:
        self.dismiss(result)
