"""The migrate dialog: destination, mode, bandwidth cap, and what each mode would cost."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, cast

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DataTable, Input, Label, RadioButton, RadioSet, Select, Static

from pcteleport.backend import MigrationRequest
from pcteleport.engine import tcg_dirty_page_bug
from pcteleport.predict import caveats, inputs_from_composition, predict_all, t_min
from pcteleport.records import VM, Composition, Mode, PredictionInputs, Site
from pcteleport.ui import palette, units
from pcteleport.ui.failures import describe
from pcteleport.ui.messages import PredictionMeasured
from pcteleport.ui.tables import ConsoleTable

if TYPE_CHECKING:
    from pcteleport.ui.app import PcteleportApp


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
        #: measured when the dialog opens (and for another destination): a fresh map, a RAM
        #: sample, the dirty rate; until then the prediction rests on the last composition
        self.inputs: PredictionInputs | None = None
        self.measuring: str | None = None  # the destination being measured
        self.measure_error: str | None = None
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
            table: ConsoleTable[Text | str] = ConsoleTable(id="predictions", cursor_type="none")
            table.add_column("mode", key="mode")
            table.add_column("WAN bytes", key="wan")
            table.add_column("time", key="time")
            table.add_column("× T_min", key="tmin")
            yield table
            yield Static(id="prediction-note")
            with Horizontal(id="migrate-buttons"):
                yield Button("Start anyway" if self.engine_warning else "Start",
                             variant="warning" if self.engine_warning else "primary",
                             id="start", compact=True)
                yield Button("Cancel", id="cancel", compact=True)

    @property
    def papp(self) -> PcteleportApp:
        return cast("PcteleportApp", self.app)

    def on_mount(self) -> None:
        self.measure_now()
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

    def measure_now(self) -> None:
        dest = self.destination()
        if dest is None or dest == self.measuring:
            return
        self.measuring, self.measure_error = dest, None
        self.measure(dest)

    @work(thread=True, exclusive=True, group="predict")
    def measure(self, dest: str) -> None:
        # Seconds of work at the sites (map, RAM sample, dirty rate): never on the UI's loop.
        try:
            inputs = self.papp.backend.prediction_inputs(self.vm.uuid, dest)
        except Exception as exc:  # any failure is shown; the dialog stays usable
            self.post_message(PredictionMeasured(self.vm.uuid, dest, None, describe(exc)))
            return
        self.post_message(PredictionMeasured(self.vm.uuid, dest, inputs, None))

    @on(PredictionMeasured)
    def _measured(self, message: PredictionMeasured) -> None:
        if message.dest != self.destination():
            return  # measured for a destination no longer chosen
        self.measuring = None
        self.inputs, self.measure_error = message.inputs, message.error
        self.update_predictions()

    def current_inputs(self) -> PredictionInputs | None:
        """What the table shows: the measurement, with the cap as it is now; before it
        arrives, the pane's last composition and the link."""
        if self.inputs is not None:
            return dataclasses.replace(self.inputs, cap_bytes_per_s=self.cap)
        if self.composition is None:
            return None
        dest = self.destination()
        link = self.source.link_to(dest) if dest else None
        return inputs_from_composition(self.composition, link.rate_bytes_per_s if link else None,
                                       link.rtt_ms if link else None, self.cap,
                                       self.vm.memory_bytes or None)

    def update_predictions(self) -> None:
        table = self.query_one("#predictions", DataTable)
        table.clear()
        inputs = self.current_inputs()
        if inputs is None:
            table.add_row(Text("no composition from the agent yet: no prediction", style="dim"),
                          "", "", "")
            self.note("measuring…" if self.measuring else self.measure_error or "")
            return
        chosen = self.mode()
        preds = predict_all(inputs)
        tmin = t_min(inputs)
        stock = preds[0]
        for p in preds:
            style = "bold reverse" if p.mode is chosen else ""
            ratio = (f" ({p.wan_bytes / stock.wan_bytes:.2f}×)"
                     if p.mode is not Mode.STOCK and stock.wan_bytes else "")
            time_txt = units.seconds(p.total_s) if p.total_s is not None else "unknown rate"
            if not p.converges:
                time_txt += " — may not converge"
            vs = f"{p.total_s / tmin:.1f}×" if p.total_s is not None and tmin else "–"
            table.add_row(Text(str(p.mode), style=style),
                          Text(units.size(p.wan_bytes) + ratio, style=style),
                          Text(time_txt, style=style), Text(vs, style=style))
        limit = f"T_min {units.seconds(tmin)}" if tmin is not None else "T_min unknown"
        if self.inputs is not None and self.inputs.sample_pages:
            # the whole caveat is in `migrate --dry-run`; the dialog has one line
            sampled = " · dirty rate sampled: may converge later" if caveats(self.inputs) \
                else ""
            self.note(f"{limit} · predicted from a fresh measurement{sampled}")
        elif self.inputs is not None:  # a backend that knows only the composition (a replay)
            self.note(f"{limit} · predicted from the composition only (no RAM sample)")
        elif self.measuring:
            self.note(f"{limit} · measuring the guest… (until then: its composition)")
        else:
            self.note(f"{limit} · {self.measure_error or 'predicted'} (from its composition)")

    def note(self, text: str) -> None:
        """T_min and where the prediction comes from, under the table."""
        self.query_one("#prediction-note", Static).update(Text(text, style="dim"))

    @on(Select.Changed)
    def _dest_changed(self) -> None:
        self.inputs = None  # another link, maybe another base: measure again
        self.measure_now()
        self.update_predictions()

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
        inputs = dataclasses.replace(self.inputs, cap_bytes_per_s=cap) if self.inputs else None
        self.dismiss(MigrationRequest(self.vm.uuid, dest, self.mode(), cap,
                                      force=bool(self.engine_warning),
                                      prediction_inputs=inputs))

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
