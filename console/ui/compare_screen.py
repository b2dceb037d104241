"""Compare recorded runs side by side: a table, a bar chart of one metric, CSV/Markdown export."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, cast

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header, Static

from pcteleport.compare import (
    METRICS,
    Metric,
    filter_runs,
    predicted_wan_bytes,
    to_csv,
    to_markdown,
)
from pcteleport.record_store import LoadResult
from pcteleport.records import MigrationRecord, Mode, Result
from pcteleport.ui import palette, units
from pcteleport.ui.console_screen import ConsoleScreen
from pcteleport.ui.failures import describe
from pcteleport.ui.messages import Exported, RecordsLoaded
from pcteleport.ui.tables import ConsoleTable

if TYPE_CHECKING:
    from pcteleport.ui.app import PcteleportApp

RESULT_STYLE = {Result.OK: palette.RESULT[Result.OK].hex,
                Result.FAILED: f"bold {palette.RESULT[Result.FAILED].hex}",
                Result.ABORTED: palette.RESULT[Result.ABORTED].hex}


def metric_text(metric: Metric, r: MigrationRecord) -> str:
    v = metric.value(r)
    if v is None:
        return "–"
    if metric.key == "total_s":
        return units.seconds(v)
    if metric.key == "wan_bytes":
        return units.size(v)
    if metric.key == "downtime_ms":
        return units.millis(v)
    assert r.throughput_after is not None
    return f"{v:,.0f} {r.throughput_after.unit}"  # 9,866 blocks/s: whole units, grouped


def bar_chart(runs: list[MigrationRecord], metric: Metric, width: int) -> Text:
    """One bar per run, scaled to the largest value; runs without the metric say so."""
    values = [metric.value(r) for r in runs]
    top = max((v for v in values if v is not None), default=0.0)
    labels = [f"{r.vm} {r.mode}" for r in runs]
    label_w = max((len(x) for x in labels), default=0)
    value_w = 14
    bar_w = max(5, width - label_w - value_w - 3)
    out = Text(f"{metric.title}\n", style="bold")
    for r, label, v in zip(runs, labels, values, strict=True):
        out.append(f"{label:>{label_w}} ")
        if v is None:
            out.append("not measured\n", style="dim")
            continue
        n = round(bar_w * v / top) if top > 0 else 0
        colour = palette.MODE[r.mode].hex
        ok = r.result is Result.OK
        # A run that did not finish is drawn hatched and says so: its numbers are not a result.
        out.append(("█" if ok else "▒") * max(n, 1 if v > 0 else 0), style=colour)
        out.append(f" {metric_text(metric, r)}")
        out.append("\n" if ok else f" ({r.result or 'running'})\n", style="" if ok else "dim")
    if not runs:
        out.append("no runs match the filters", style="dim")
    return out


class CompareScreen(ConsoleScreen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("v", "next_vm", "VM"),
        Binding("o", "next_mode", "Mode"),
        Binding("g", "next_metric", "Chart"),
        Binding("e", "export", "Export"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.records: list[MigrationRecord] = []
        self.problems: list[str] = []
        self.vm_filter: str | None = None
        self.mode_filter: Mode | None = None
        self.metric = METRICS[0]

    @property
    def papp(self) -> PcteleportApp:
        return cast("PcteleportApp", self.app)

    def commands_here(self) -> Iterable[SystemCommand]:
        yield SystemCommand("Export runs as CSV and Markdown",
                            "Writes both files to the export folder", self.action_export)
        yield SystemCommand("Chart the next metric",
                            "Total time, WAN bytes, downtime, throughput", self.action_next_metric)

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="cmp-filters")
        table: ConsoleTable[Text | str] = ConsoleTable(id="cmp-table", cursor_type="row",
                                                       cursor_foreground_priority="renderable",
                                                       zebra_stripes=True)
        table.add_column("when", key="when")
        table.add_column("VM", key="vm")
        table.add_column("route", key="route")
        table.add_column("mode", key="mode")
        table.add_column("result", key="result")
        for m in METRICS:
            table.add_column(m.title, key=m.key)
        table.add_column("WAN predicted", key="predicted")
        yield table
        yield Static(id="cmp-chart")
        yield Footer()

    def on_mount(self) -> None:
        self.render_all()
        self.load()

    @work(thread=True, exclusive=True, group="records")
    def load(self) -> None:
        try:
            result = self.papp.backend.records()
        except Exception as exc:  # any failure is shown; the console stays up
            result = LoadResult(problems=[describe(exc)])
        self.post_message(RecordsLoaded(result))

    @on(RecordsLoaded)
    def _loaded(self, message: RecordsLoaded) -> None:
        # The same run can reach us twice (a copied record file): show it once.
        seen: set[str] = set()
        self.records = [r for r in message.result.records
                        if not (r.run_id in seen or seen.add(r.run_id))]
        self.problems = message.result.problems
        for problem in self.problems[:3]:
            self.notify(problem, severity="warning", timeout=6)
        self.render_all()

    def visible(self) -> list[MigrationRecord]:
        return filter_runs(self.records, self.vm_filter, self.mode_filter)

    # --- rendering -------------------------------------------------------------------------

    def render_all(self) -> None:
        runs = self.visible()
        f = Text.assemble(
            ("VM ", "dim"), (self.vm_filter or "all", "bold"), ("  mode ", "dim"),
            (str(self.mode_filter) if self.mode_filter else "all", "bold"),
            ("  chart ", "dim"), (self.metric.title, "bold"),
            (f"  {len(runs)} of {len(self.records)} runs", "dim"))
        if not self.records:
            f.append("  — no recorded runs yet: every migration is recorded here", style="dim")
        self.query_one("#cmp-filters", Static).update(f)
        table = self.query_one("#cmp-table", DataTable)
        table.clear()
        for r in runs:
            when = time.strftime("%m-%d %H:%M", time.localtime(r.started_at))
            result = Text("running" if r.result is None else str(r.result),
                          style=RESULT_STYLE.get(r.result, "") if r.result else "dim")
            table.add_row(when, Text(r.vm, style="bold"), f"{r.from_site}→{r.to_site}",
                          Text(str(r.mode), style=palette.MODE[r.mode].hex),
                          result, *[metric_text(m, r) for m in METRICS],
                          units.size(predicted_wan_bytes(r)), key=r.run_id)
        self.chart(runs)

    def chart(self, runs: list[MigrationRecord]) -> None:
        widget = self.query_one("#cmp-chart", Static)
        widget.update(bar_chart(runs, self.metric, max(20, self.size.width - 4)))

    # --- actions ---------------------------------------------------------------------------

    def action_next_vm(self) -> None:
        names = sorted({r.vm for r in self.records})
        options: list[str | None] = [None, *names]
        self.vm_filter = options[(options.index(self.vm_filter) + 1) % len(options)]
        self.render_all()

    def action_next_mode(self) -> None:
        options: list[Mode | None] = [None, *Mode]
        self.mode_filter = options[(options.index(self.mode_filter) + 1) % len(options)]
        self.render_all()

    def action_next_metric(self) -> None:
        self.metric = METRICS[(METRICS.index(self.metric) + 1) % len(METRICS)]
        self.render_all()

    def action_export(self) -> None:
        runs = self.visible()
        if not runs:
            self.notify("nothing to export", severity="warning")
            return
        self.export(runs, self.papp.export_dir)

    @work(thread=True, group="export")
    def export(self, runs: list[MigrationRecord], folder: Path) -> None:
        stem = folder / time.strftime("pcteleport-compare-%Y%m%d-%H%M%S")
        csv_path, md_path = stem.with_suffix(".csv"), stem.with_suffix(".md")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            csv_path.write_text(to_csv(runs), encoding="utf-8")
            md_path.write_text(to_markdown(runs), encoding="utf-8")
        except OSError as exc:
            self.post_message(Exported([], f"export to {folder} failed: {exc.strerror}"))
            return
        self.post_message(Exported([csv_path, md_path]))

    @on(Exported)
    def _exported(self, message: Exported) -> None:
        if message.error:
            self.notify(message.error, severity="error")
        else:
            self.notify("wrote " + ", ".join(str(p) for p in message.paths), timeout=6)
