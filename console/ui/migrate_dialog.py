"""The migrate dialog: destination, mode, bandwidth cap, and what each mode would cost."""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Input, Label, RadioButton, RadioSet, Select, Static

from pcteleport.backend import MigrationRequest
from pcteleport.engine import tcg_dirty_page_bug
from pcteleport.predict import predict_all
from pcteleport.records import VM, Composition, Mode, Site
from pcteleport.ui import palette, units


class MigrateDialog(ModalScreen[MigrationRequest | None]):
    BINDINGS = [
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+s", "start", "Start"),
        *[Binding(str(i), f"pick_mode({i - 1})", str(m), show=False)
          for i, m in enumerate(Mode, start=1)],
    ]

    def __init__(self, vm: VM, source: Site, sites: list[Site],
                 composition: Composition | None) -> None:
        super().__init__()
        self.vm = vm
        self.source = source
        self.destinations = [s for s in sites if s.name != source.name]
        self.composition = composition
        self.cap: float | None = None
        # Shown before anything starts; starting after seeing it is the operator's --force.
        self.engine_warning = tcg_dirty_page_bug(vm.qemu_version or source.qemu_version, vm.tcg,
                                                 source.name)

    def compose(self) -> ComposeResult:
        with Vertical(id="migrate-box"):
            yield Label(Text.assemble("Migrate ", (self.vm.name, "bold"),
                                      f" from {self.source.name}"), id="migrate-title")
            with Horizontal(classes="migrate-row"):
                yield Label("to", classes="field-label")
                if self.destinations:
                    yield Select([(s.name, s.name) for s in self.destinations], id="dest",
                                 allow_blank=False, compact=True)
                else:
                    yield Label("no other site", id="dest-none")
            with Horizontal(classes="migrate-row"):
                yield Label("cap", classes="field-label")
                yield Input(placeholder="none  (e.g. 100M = 100 Mbit/s)", id="cap",
                            compact=True)
            with RadioSet(id="mode"):
                for mode in Mode:
                    yield RadioButton(str(mode), value=mode is Mode.TELEPORT, name=str(mode))
            yield Static(id="cap-error")
            if self.engine_warning:
                yield Static(Text(f"⚠ {self.engine_warning}", style="bold"),
                             id="engine-warning")
            table: DataTable[Text | str] = DataTable(id="predictions", cursor_type="none")
            table.add_column("mode", key="mode")
            table.add_column("WAN bytes", key="wan")
            table.add_column("time", key="time")
            yield table
            with Horizontal(id="migrate-buttons"):
                yield Button("Start anyway" if self.engine_warning else "Start",
                             variant="warning" if self.engine_warning else "primary",
                             id="start", compact=True)
                yield Button("Cancel", id="cancel", compact=True)

    def on_mount(self) -> None:
        self.update_predictions()
        modes = self.query_one(RadioSet)
        # The set highlights its first mode when mounted: move the highlight to the chosen one.
        for _ in range(max(0, modes.pressed_index)):
            modes.action_next_button()
        modes.focus()

    # --- state -----------------------------------------------------------------------------

    def destination(self) -> str | None:
        selects = self.query("#dest").results(Select)
        for select in selects:
            value = select.value
            return value if isinstance(value, str) else None
        return None

    def mode(self) -> Mode:
        pressed = self.query_one(RadioSet).pressed_button
        return Mode(pressed.name) if pressed is not None and pressed.name else Mode.TELEPORT

    def update_predictions(self) -> None:
        table = self.query_one("#predictions", DataTable)
        table.clear()
        dest = self.destination()
        link = self.source.link_to(dest) if dest else None
        if self.composition is None:
            table.add_row(Text("no composition from the agent yet: no prediction", style="dim"),
                          "", "")
            return
        rate = link.rate_bytes_per_s if link else None
        rtt = (link.rtt_ms or 0.0) if link else 0.0
        chosen = self.mode()
        preds = predict_all(self.composition, rate, rtt, self.cap,
                            ram_bytes=self.vm.memory_bytes or None)
        stock = preds[0]
        for p in preds:
            style = "bold reverse" if p.mode is chosen else ""
            ratio = (f" ({p.wan_bytes / stock.wan_bytes:.2f}×)"
                     if p.mode is not Mode.STOCK and stock.wan_bytes else "")
            time_txt = units.seconds(p.seconds) if p.seconds is not None else "unknown rate"
            if not p.converges:
                time_txt += " — may not converge"
            table.add_row(Text(str(p.mode), style=style),
                          Text(units.size(p.wan_bytes) + ratio, style=style),
                          Text(time_txt, style=style))
        table.border_subtitle = "predicted"

    @on(Select.Changed)
    @on(RadioSet.Changed)
    def _changed(self) -> None:
        self.update_predictions()

    @on(Input.Changed, "#cap")
    def _cap_changed(self, event: Input.Changed) -> None:
        note = self.query_one("#cap-error", Static)
        try:
            self.cap = units.parse_cap(event.value)
        except ValueError as exc:
            note.update(Text(str(exc), style=f"bold {palette.ERROR.hex}"))
            return
        note.update("" if self.cap is None else f"cap {units.link_rate(self.cap)}")
        self.update_predictions()

    # --- actions ---------------------------------------------------------------------------

    @on(Button.Pressed, "#start")
    def action_start(self) -> None:
        dest = self.destination()
        if dest is None:
            self.notify("no destination site", severity="error")
            return
        try:
            cap = units.parse_cap(self.query_one("#cap", Input).value)
        except ValueError as exc:
            self.notify(str(exc), severity="error")
            return
        self.dismiss(MigrationRequest(self.vm.uuid, dest, self.mode(), cap,
                                      force=bool(self.engine_warning)))

    def action_pick_mode(self, index: int) -> None:
        buttons = list(self.query(RadioButton))
        if 0 <= index < len(buttons):
            buttons[index].value = True

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)

    @on(Input.Submitted, "#cap")
    def _submitted(self) -> None:
        self.action_start()
