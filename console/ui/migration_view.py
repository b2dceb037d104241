"""The migration view: phases, progress, rates, page counters, downtime, ETA and the log.

It is a view of a TrackedMigration (tracker.py), never its owner: the App's tracker runs the
migration; opening the view shows everything reported so far, closing it changes nothing."""

from __future__ import annotations

from collections.abc import Iterable

from rich.text import Text
from textual import on
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import Digits, Footer, Header, Label, ProgressBar, RichLog, Static
from textual_plotext import PlotextPlot

from pcteleport.backend import MigrationRequest
from pcteleport.predict import predict, t_min
from pcteleport.records import (
    PAGE_SIZE,
    PHASE_ORDER,
    LogLine,
    MigrationRecord,
    MigrationSample,
    Phase,
    PhaseMark,
    RecordBuilder,
    Result,
)
from pcteleport.ui import palette, units
from pcteleport.ui.console_screen import ConsoleScreen
from pcteleport.ui.messages import TrackedMigrationChanged, TrackedMigrationEnded
from pcteleport.ui.tracker import LogEntry, MigrationRunning, MigrationTracker, TrackedMigration

RESULT_STYLE = {result: f"bold {colour.hex}" for result, colour in palette.RESULT.items()}
ETA_WINDOW = 3  # samples averaged for the ETA
#: phases marked on the rate plot, each where it began (later precopy iterations are not)
PLOTTED_PHASES = (Phase.MAP, Phase.ITERATIVE, Phase.STOP_AND_COPY, Phase.RESUME)
PLOT_HEADROOM = 1.3  # the y axis goes this far above the highest rate: room for phase names


def phase_timeline(marks: list[PhaseMark], iteration: int, finished: Result | None) -> Text:
    reached = {m.phase: m for m in marks}
    current = marks[-1].phase if marks else None
    t = Text()
    for i, phase in enumerate(PHASE_ORDER):
        if i:
            t.append(" ▸ ", style="dim")
        label = str(phase)
        if phase is Phase.ITERATIVE and iteration:
            label += f" #{iteration}"
        if phase is current and finished is None:
            t.append(f" {label} ", style="bold reverse")
        elif phase in reached:
            t.append(f"✓ {label} {reached[phase].t:.0f}s", style=palette.PHASE_REACHED.hex)
        else:
            t.append(label, style="dim")
    return t


def plot_end(record: MigrationRecord, final: MigrationRecord | None) -> float:
    """Where the rate plot's x axis ends; it starts at the request (t = 0). A finished run ends
    at its total time (the VM resumed at the destination), a running one at its latest news."""
    if final is not None and final.total_s:
        return final.total_s
    latest = max([s.t for s in record.samples] + [m.t for m in record.phases], default=0.0)
    return latest if latest > 0 else 1.0


def phase_lines(marks: list[PhaseMark], end: float) -> list[tuple[float, str]]:
    """(t, name) of each plotted phase's start within (0, end]."""
    first: dict[Phase, float] = {}
    for mark in marks:
        first.setdefault(mark.phase, mark.t)
    return [(first[p], str(p)) for p in PLOTTED_PHASES if p in first and 0 < first[p] <= end]


def place_labels(lines: list[tuple[float, str]], end: float, columns: int,
                 rows: int = 2) -> list[tuple[float, str, int, bool]]:
    """Where each phase name goes on a plot `columns` wide: (t, name, row from the top, right
    aligned). A name stands right of its line, or left of it where it would leave the plot; in
    the first row where it overlaps no other name, clear of other lines if any row allows it;
    it is left out when no row has room."""
    def column(t: float) -> int:
        return round(t / end * (columns - 1))

    walls = [column(t) for t, _ in lines]
    taken: list[list[tuple[int, int]]] = [[] for _ in range(rows)]
    placed = []
    for t, name in lines:
        col = column(t)
        sides = [(False, (col + 1, col + len(name))), (True, (col - len(name), col - 1))]
        inside = [(right, span) for right, span in sides if span[0] >= 0 and span[1] < columns]
        # Clear of other lines if it can be, else over one of them in a single row.
        ranked = sorted(((any(span[0] <= w <= span[1] for w in walls), row, right, span)
                         for row in range(rows) for right, span in inside),
                        key=lambda c: (c[0], c[1]))
        spot = next(((row, right, span) for _, row, right, span in ranked
                     if all(span[1] < a - 1 or span[0] > b + 1 for a, b in taken[row])), None)
        if spot is not None:
            row, right, span = spot
            taken[row].append(span)
            placed.append((t, name, row, right))
    return placed


def where_it_runs(record: MigrationRecord) -> str:
    """After a failure, where the VM was found to run (the service checked; "" if unknown)."""
    if record.runs_at == "nowhere":
        return " — the VM runs nowhere"
    return f" — the VM runs at {record.runs_at}" if record.runs_at else ""


def eta_seconds(samples: list[MigrationSample]) -> float | None:
    """Remaining bytes over the net rate of the last few samples (what is sent minus what the
    guest dirties again); None while that rate is not positive."""
    recent = samples[-ETA_WINDOW:]
    if not recent:
        return None
    net = sum(s.guest_rate_bytes_per_s - s.dirty_rate_bytes_per_s for s in recent) / len(recent)
    if net <= 0:
        return None
    return recent[-1].remaining_bytes / net


def tracked_t_min(m: TrackedMigration) -> tuple[float | None, float | None]:
    """(T_min, the predicted total time) of a tracked run: from its record once it ended (or
    a replayed record), else from the measurement its request carried."""
    final = m.final or m.record
    if final.t_min_s is not None or final.prediction is not None:
        return final.t_min_s, final.prediction.total_s if final.prediction else None
    inputs = m.request.prediction_inputs
    if inputs is None:
        return None, None
    return t_min(inputs), predict(inputs, m.request.mode).total_s


def against_t_min(elapsed: float | None, limit: float | None,
                  predicted: float | None) -> str:
    """'2.0× T_min (3.5 s), predicted 7.2 s': the run's time so far against the physical
    limit; '' when the limit is unknown."""
    if limit is None or limit <= 0:
        return ""
    told = f"  predicted {units.seconds(predicted)}" if predicted is not None else ""
    if elapsed is None:
        return f"T_min {units.seconds(limit)}{told}"
    return f"{elapsed / limit:.1f}× T_min ({units.seconds(limit)}){told}"


def migration_summary(m: TrackedMigration) -> Text:
    """One line about a tracked migration, for the screens that list it (main, VM detail)."""
    r = m.record
    t = Text.assemble((r.vm, "bold"), f"  {r.from_site} → {r.to_site}  ", (str(r.mode), "bold"),
                      "  ")
    final = m.final
    if final is None:
        t.append(units.percent(m.progress_high), style="bold")
        if r.phases:
            phase = r.phases[-1].phase
            label = str(phase) + (f" #{m.iteration}"
                                  if phase is Phase.ITERATIVE and m.iteration else "")
            t.append(f"  {label}")
        last = r.samples[-1] if r.samples else None
        if last is not None:
            t.append(f"  ETA {units.seconds(eta_seconds(r.samples))}", style="dim")
    elif final.result is not None:
        t.append(f" {str(final.result).upper()} ", style=RESULT_STYLE[final.result] + " reverse")
        if final.total_s is not None:
            t.append(f"  in {units.seconds(final.total_s)}")
        if final.downtime_ms is not None:
            t.append(f"  downtime {units.millis(final.downtime_ms)}", style="dim")
    return t


def open_new_migration(screen: Screen[object], tracker: MigrationTracker,
                       request: MigrationRequest, *, replace: bool = False) -> None:
    """Start `request` on the tracker and show it (instead of `screen` when `replace`); a VM
    whose migration still runs is not started twice."""
    try:
        migration = tracker.start(request)
    except MigrationRunning as exc:
        screen.notify(str(exc), severity="warning")
        return
    view = MigrationView(migration, tracker)
    if replace:
        screen.app.switch_screen(view)
    else:
        screen.app.push_screen(view)


class MigrationView(ConsoleScreen):
    BINDINGS = [
        Binding("a", "abort", "Abort"),
        Binding("escape", "leave", "Back"),
    ]

    def __init__(self, migration: TrackedMigration, tracker: MigrationTracker) -> None:
        super().__init__()
        self.migration = migration
        self.tracker = tracker
        self._lines_shown = 0

    # What it shows, by name (tests and scripts/screenshots.py read these).
    @property
    def request(self) -> MigrationRequest:
        return self.migration.request

    @property
    def builder(self) -> RecordBuilder:
        return self.migration.builder

    @property
    def final(self) -> MigrationRecord | None:
        return self.migration.final

    @property
    def running(self) -> bool:
        return self.migration.running

    def commands_here(self) -> Iterable[SystemCommand]:
        yield SystemCommand("Abort this migration", "Stop it; the source keeps running",
                            self.action_abort)

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="mig-title")
        yield Static(id="mig-phases")
        with Horizontal(id="mig-progress-row"):
            yield ProgressBar(total=100, show_eta=False, id="mig-progress")
            yield Static(id="mig-eta")
        yield Static(id="mig-note")
        with Horizontal(id="mig-middle"):
            with Vertical(id="mig-numbers"):
                yield Static(id="mig-counters")
                yield Label("expected downtime", id="mig-downtime-label")
                with Horizontal(id="mig-downtime-row"):
                    yield Digits("–", id="mig-downtime")
                    yield Label("ms", id="mig-downtime-unit")
            with Vertical(id="mig-plot"):
                yield Static(rates_legend(), id="mig-rates-legend")
                yield PlotextPlot(id="mig-rates")
        yield RichLog(id="mig-log", wrap=True, markup=False, max_lines=2000)
        yield Footer()

    def on_mount(self) -> None:
        self.tracker.observe(self)
        self.write_log()
        self.render_all()
        if self.final is not None:
            self.tracker.saw_end(self.migration)

    def on_unmount(self) -> None:
        self.tracker.unobserve(self)

    # --- the tracker's news ----------------------------------------------------------------

    @on(TrackedMigrationChanged)
    def _changed(self, message: TrackedMigrationChanged) -> None:
        if message.migration is not self.migration:
            return
        self.write_log()
        if not isinstance(message.event, LogLine):  # a log line changes nothing else
            self.render_all()

    @on(TrackedMigrationEnded)
    def _ended(self, message: TrackedMigrationEnded) -> None:
        if message.migration is not self.migration:
            return
        self.write_log()
        self.render_all()
        self.tracker.saw_end(self.migration)

    # --- rendering -------------------------------------------------------------------------

    def write_log(self) -> None:
        """Append the lines the log does not show yet (all of them on a reopened view)."""
        log = self.query_one(RichLog)
        lines = self.migration.lines
        for entry in lines[self._lines_shown:]:
            log.write(log_text(entry))
        self._lines_shown = len(lines)

    def render_title(self) -> None:
        m = self.migration
        r = m.record
        t = Text.assemble((r.vm, "bold"), f"  {r.from_site} → {r.to_site}  ",
                          (str(r.mode), "bold reverse"))
        if m.request.bandwidth_cap_bytes_per_s:
            t.append(f"  cap {units.link_rate(m.request.bandwidth_cap_bytes_per_s)}")
        if m.link is not None:
            t.append(f"  WAN {units.link_rate(m.link.rate_bytes_per_s)}", style="dim")
            if m.link.rtt_ms is not None:
                t.append(f" / {m.link.rtt_ms:.0f} ms", style="dim")
        if m.final is not None and m.final.result is not None:
            t.append("  ")
            t.append(f" {str(m.final.result).upper()} ",
                     style=RESULT_STYLE[m.final.result] + " reverse")
        self.query_one("#mig-title", Static).update(t)

    def render_all(self) -> None:
        r = self.migration.record
        final = self.migration.final
        self.render_title()
        self.query_one("#mig-phases", Static).update(
            phase_timeline(r.phases, self.migration.iteration, final.result if final else None))
        bar = self.query_one("#mig-progress", ProgressBar)
        bar.update(progress=round(self.migration.progress_high * 100, 1))
        last = r.samples[-1] if r.samples else None
        eta = self.query_one("#mig-eta", Static)
        limit, predicted = tracked_t_min(self.migration)
        if final is not None:
            eta.update(Text.assemble((f"total {units.seconds(final.total_s)}", "bold"),
                                     ("  " + against_t_min(final.total_s, limit, predicted)
                                      if limit else "", "dim")))
        elif last is not None:
            eta.update(Text.assemble(
                f"{units.size(last.remaining_bytes)} left",
                f"  it. {last.iteration}" if last.iteration else "",
                f"  ETA {units.seconds(eta_seconds(r.samples))}",
                ("  " + against_t_min(last.t, limit, predicted) if limit else "", "dim")))
        note = self.migration.note
        if final is not None and final.error:
            note = final.error + where_it_runs(final)
        self.query_one("#mig-note", Static).update(
            Text(note, style=f"bold {palette.ERROR.hex}" if final and final.error
                 else palette.WARN.hex))
        self.render_counters(last)
        self.render_downtime(last)
        self.plot()

    def render_counters(self, last: MigrationSample | None) -> None:
        final = self.migration.final
        pages = final.pages if final is not None else (
            last.pages if last else self.migration.record.pages)
        t = Text()
        for label, n, colour in (("teleported", pages.teleported, palette.TELEPORTED),
                                 ("zero", pages.zero, palette.ZERO),
                                 ("sent", pages.sent, palette.SENT)):
            t.append(f"{label:>10} ", style=colour.hex)
            t.append(f"{units.count(n):>11}", style="bold")
            t.append(f" {units.size(n * PAGE_SIZE)}\n", style="dim")
        if pages.written_since_base:  # sent, though the map named them: the overlay has them
            t.append(f"{'of them':>10} {units.count(pages.written_since_base):>11}", style="dim")
            t.append(" written since base\n", style="dim")
        if last is not None:
            t.append(f"{'guest':>10} {units.rate(last.guest_rate_bytes_per_s)}\n")
            t.append(f"{'WAN':>10} {units.link_rate(last.wan_rate_bytes_per_s)}")
        if final is not None and final.result is not None:
            t.append(f"\n{'WAN total':>10} {units.size(final.wan_bytes)}", style="bold")
            if final.guest_bytes:
                share = final.wan_bytes / final.guest_bytes
                t.append(f" = {units.percent(share)} of {units.size(final.guest_bytes)}",
                         style="bold")
        self.query_one("#mig-counters", Static).update(t)

    def render_downtime(self, last: MigrationSample | None) -> None:
        label = self.query_one("#mig-downtime-label", Label)
        digits = self.query_one("#mig-downtime", Digits)
        final = self.migration.final
        if final is not None and final.downtime_ms is not None:
            label.update(Text("downtime", style="bold"))
            digits.update(f"{final.downtime_ms:.0f}")
            digits.set_class(True, "-final")
        elif final is not None:
            label.update(Text(f"no downtime: {final.result}", style="bold"))
            digits.update("–")
        else:
            label.update("expected downtime")
            expected = last.expected_downtime_ms if last else None
            digits.update("–" if expected is None else f"{expected:.0f}")

    def plot(self) -> None:
        """Guest-memory and WAN rates over the whole run, from the request to the resume (or
        to the latest sample while it runs), with a line where each phase began."""
        widget = self.query_one("#mig-rates", PlotextPlot)
        plt = widget.plt
        plt.clear_data()
        plt.clear_figure()
        record = self.migration.record
        samples = record.samples
        end = plot_end(record, self.migration.final)
        plt.xlim(0, end)
        plt.xlabel("s since the request")
        top = max([s.guest_rate_bytes_per_s / 2**20 for s in samples]
                  + [s.wan_rate_bytes_per_s / 2**20 for s in samples], default=0.0) or 1.0
        ymax = top * PLOT_HEADROOM
        plt.ylim(0, ymax)
        if samples:
            xs = [s.t for s in samples]
            plt.plot(xs, [s.guest_rate_bytes_per_s / 2**20 for s in samples],
                     color=palette.GUEST_RATE.rgb, marker="braille")
            plt.plot(xs, [s.wan_rate_bytes_per_s / 2**20 for s in samples],
                     color=palette.WAN_RATE.rgb, marker="braille")
        lines = phase_lines(record.phases, end)
        for t, _ in lines:
            plt.vline(t, color=palette.MUTED.rgb)
        # The canvas: the widget less the y axis's numbers and the frame; rows under the title.
        columns = max(10, widget.size.width - 8)
        canvas_rows = max(4, widget.size.height - 4)
        label_rows = 2 if canvas_rows >= 8 else 1  # a short plot keeps its rows for the rates
        for t, name, row, right in place_labels(lines, end, columns, label_rows):
            step = end / max(1, columns - 1)
            plt.text(name, t - step if right else t + step, ymax * (1 - row / canvas_rows),
                     color=palette.MUTED.rgb, alignment="right" if right else "left")
        widget.refresh()

    # --- actions ---------------------------------------------------------------------------

    def action_abort(self) -> None:
        from pcteleport.ui.confirm import ConfirmScreen

        if not self.running:
            self.notify("the migration has ended", severity="warning")
            return
        name = self.migration.record.vm
        self.app.push_screen(
            ConfirmScreen(f"Abort the migration of {name}?",
                          "The source keeps running; the destination is discarded."),
            callback=self._confirmed_abort)

    def _confirmed_abort(self, yes: bool | None) -> None:
        if yes and self.running:
            self.tracker.abort(self.migration.request.vm_uuid)

    def action_leave(self) -> None:
        # Only the view goes: the migration is the tracker's and runs on.
        self.app.pop_screen()
        if self.running:
            self.app.notify(f"{self.migration.record.vm}: the migration goes on; select the VM "
                            "and press Enter to watch it again", timeout=5)


def rates_legend() -> Text:
    """The rate plot's title: its unit and what each line is, in its colour."""
    return Text.assemble(("MiB/s", "dim"), "  ", ("⣿⣿", palette.GUEST_RATE.hex), " guest  ",
                         ("⣿⣿", palette.WAN_RATE.hex), " WAN  ", ("│", palette.MUTED.hex),
                         " phases")


def log_text(entry: LogEntry) -> Text:
    """The backend's lines verbatim; the console's own (abort requested...) stand out."""
    return Text(entry.text, style=f"bold {palette.WARN.hex}" if entry.console else "")
