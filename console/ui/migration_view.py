"""The migration view: phases, progress, rates, page counters, downtime, ETA and the log."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, cast

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import Digits, Footer, Header, Label, ProgressBar, RichLog, Static
from textual_plotext import PlotextPlot

from pcteleport.backend import MigrationRequest
from pcteleport.records import (
    PAGE_SIZE,
    PHASE_ORDER,
    VM,
    LogLine,
    MigrationRecord,
    MigrationSample,
    Phase,
    PhaseMark,
    RecordBuilder,
    Result,
    WanLink,
    log_stamp,
)
from pcteleport.ui import palette, units
from pcteleport.ui.console_screen import ConsoleScreen
from pcteleport.ui.failures import describe
from pcteleport.ui.messages import MigrationCouldNotStart, MigrationFinished, MigrationProgress

if TYPE_CHECKING:
    from pcteleport.ui.app import PcteleportApp

RESULT_STYLE = {result: f"bold {colour.hex}" for result, colour in palette.RESULT.items()}
ETA_WINDOW = 3  # samples averaged for the ETA


class MigrationTarget(Message):
    """Who is being migrated, found before the run starts (for the title)."""

    def __init__(self, vm: VM | None, link: WanLink | None) -> None:
        super().__init__()
        self.vm = vm
        self.link = link


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


def view_name(vm_uuid: str) -> str:
    """The name a migration view is kept (installed) under while the operator looks elsewhere."""
    return f"migration:{vm_uuid}"


class MigrationView(ConsoleScreen):
    BINDINGS = [
        Binding("a", "abort", "Abort"),
        Binding("escape", "leave", "Back"),
    ]

    def __init__(self, request: MigrationRequest) -> None:
        super().__init__()
        self.request = request
        self.vm: VM | None = None
        self.link: WanLink | None = None
        self.builder = RecordBuilder(MigrationRecord(
            run_id=uuid.uuid4().hex[:8], vm=request.vm_uuid, from_site="?",
            to_site=request.to_site, mode=request.mode))
        self.final: MigrationRecord | None = None
        self.progress_high = 0.0  # the bar never goes below this
        self.note = ""  # why the bar held still, when the remainder grew
        self.iteration = 0

    @property
    def papp(self) -> PcteleportApp:
        return cast("PcteleportApp", self.app)

    @property
    def running(self) -> bool:
        return self.final is None

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
            yield PlotextPlot(id="mig-rates")
        yield RichLog(id="mig-log", wrap=True, markup=False, max_lines=2000)
        yield Footer()

    def on_mount(self) -> None:
        self.render_all()
        self.run_migration()

    # --- the run ---------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="migration")
    def run_migration(self) -> None:
        backend = self.papp.backend
        try:
            vm, link = self._find_target()
            self.post_message(MigrationTarget(vm, link))
            record = backend.migrate(self.request,
                                     lambda event: self.post_message(MigrationProgress(event)))
        except Exception as exc:  # any failure is shown; the console stays up
            self.post_message(MigrationCouldNotStart(describe(exc)))
            return
        self.post_message(MigrationFinished(record))

    def _find_target(self) -> tuple[VM | None, WanLink | None]:
        """Name and route for the title; not knowing them must not stop the migration."""
        backend = self.papp.backend
        try:
            sites = backend.sites()
        except Exception:  # the title then shows the UUID
            return None, None
        for site in sites:
            try:
                vms = backend.vms(site.name)
            except Exception:  # one site failing must not stop the search
                continue
            for vm in vms:
                if vm.uuid == self.request.vm_uuid:
                    return vm, site.link_to(self.request.to_site)
        return None, None

    @on(MigrationTarget)
    def _target(self, message: MigrationTarget) -> None:
        self.vm, self.link = message.vm, message.link
        if message.vm is not None:
            self.builder.record.vm = message.vm.name
            self.builder.record.from_site = message.vm.site
        self.render_title()

    @on(MigrationProgress)
    def _progress(self, message: MigrationProgress) -> None:
        event = message.event
        self.builder.add(event)
        if isinstance(event, LogLine):
            self.query_one(RichLog).write(Text(event.text))
            return
        if isinstance(event, MigrationSample):
            self._track_progress(event)
        self.render_all()

    def _track_progress(self, s: MigrationSample) -> None:
        samples = self.builder.record.samples
        prev = samples[-2] if len(samples) >= 2 else None
        self.iteration = s.iteration
        done = 1.0 - s.remaining_bytes / s.total_bytes if s.total_bytes else 0.0
        if prev is not None and s.remaining_bytes > prev.remaining_bytes:
            grew = s.remaining_bytes - prev.remaining_bytes
            self.note = (f"iteration {s.iteration}: the guest dirtied memory faster than it was "
                         f"sent — {units.size(s.remaining_bytes)} left (+{units.size(grew)}); "
                         f"bar held at {self.progress_high * 100:.0f}%")
        elif done > self.progress_high:
            self.note = ""
        self.progress_high = max(self.progress_high, done)

    @on(MigrationFinished)
    def _finished(self, message: MigrationFinished) -> None:
        self.final = message.record
        if message.record.result is Result.OK:
            self.progress_high = 1.0
            self.note = ""
        self.render_all()
        self.notify(f"{message.record.vm}: migration {message.record.result}", timeout=4,
                    severity="information" if message.record.result is Result.OK else "error")

    @on(MigrationCouldNotStart)
    def _could_not_start(self, message: MigrationCouldNotStart) -> None:
        self.final = MigrationRecord(
            run_id=self.builder.record.run_id, vm=self.builder.record.vm, from_site="?",
            to_site=self.request.to_site, mode=self.request.mode, result=Result.FAILED,
            error=message.error)
        self.render_all()

    # --- rendering -------------------------------------------------------------------------

    def render_title(self) -> None:
        r = self.builder.record
        t = Text.assemble((r.vm, "bold"), f"  {r.from_site} → {r.to_site}  ",
                          (str(r.mode), "bold reverse"))
        if self.request.bandwidth_cap_bytes_per_s:
            t.append(f"  cap {units.link_rate(self.request.bandwidth_cap_bytes_per_s)}")
        if self.link is not None:
            t.append(f"  WAN {units.link_rate(self.link.rate_bytes_per_s)}", style="dim")
            if self.link.rtt_ms is not None:
                t.append(f" / {self.link.rtt_ms:.0f} ms", style="dim")
        if self.final is not None and self.final.result is not None:
            t.append("  ")
            t.append(f" {str(self.final.result).upper()} ", style=RESULT_STYLE[self.final.result]
                     + " reverse")
        self.query_one("#mig-title", Static).update(t)

    def render_all(self) -> None:
        r = self.builder.record
        final = self.final
        self.render_title()
        self.query_one("#mig-phases", Static).update(
            phase_timeline(r.phases, self.iteration, final.result if final else None))
        bar = self.query_one("#mig-progress", ProgressBar)
        bar.update(progress=round(self.progress_high * 100, 1))
        last = r.samples[-1] if r.samples else None
        eta = self.query_one("#mig-eta", Static)
        if final is not None:
            eta.update(Text(f"total {units.seconds(final.total_s)}", style="bold"))
        elif last is not None:
            eta.update(Text.assemble(
                f"{units.size(last.remaining_bytes)} left",
                f"  it. {last.iteration}" if last.iteration else "",
                f"  ETA {units.seconds(eta_seconds(r.samples))}"))
        note = self.note
        if final is not None and final.error:
            note = final.error + where_it_runs(final)
        self.query_one("#mig-note", Static).update(
            Text(note, style=f"bold {palette.ERROR.hex}" if final and final.error
                 else palette.WARN.hex))
        self.render_counters(last)
        self.render_downtime(last)
        self.plot()

    def render_counters(self, last: MigrationSample | None) -> None:
        pages = self.final.pages if self.final is not None else (
            last.pages if last else self.builder.record.pages)
        t = Text()
        for label, n, colour in (("teleported", pages.teleported, palette.TELEPORTED),
                                 ("zero", pages.zero, palette.ZERO),
                                 ("sent", pages.sent, palette.SENT)):
            t.append(f"{label:>10} ", style=colour.hex)
            t.append(f"{units.count(n):>11}", style="bold")
            t.append(f" {units.size(n * PAGE_SIZE)}\n", style="dim")
        if last is not None:
            t.append(f"{'guest':>10} {units.rate(last.guest_rate_bytes_per_s)}\n")
            t.append(f"{'WAN':>10} {units.link_rate(last.wan_rate_bytes_per_s)}")
        final = self.final
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
        final = self.final
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
        widget = self.query_one("#mig-rates", PlotextPlot)
        plt = widget.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title("guest memory vs WAN (MiB/s)")
        samples = self.builder.record.samples
        if samples:
            xs = [s.t for s in samples]
            plt.plot(xs, [s.guest_rate_bytes_per_s / 2**20 for s in samples],
                     label="guest", color=palette.GUEST_RATE.rgb, marker="braille")
            plt.plot(xs, [s.wan_rate_bytes_per_s / 2**20 for s in samples],
                     label="WAN", color=palette.WAN_RATE.rgb, marker="braille")
        widget.refresh()

    # --- actions ---------------------------------------------------------------------------

    def action_abort(self) -> None:
        from pcteleport.ui.confirm import ConfirmScreen

        if not self.running:
            self.notify("the migration has ended", severity="warning")
            return
        name = self.builder.record.vm
        self.app.push_screen(
            ConfirmScreen(f"Abort the migration of {name}?",
                          "The source keeps running; the destination is discarded."),
            callback=self._confirmed_abort)

    def _confirmed_abort(self, yes: bool | None) -> None:
        if yes and self.running:
            self.query_one(RichLog).write(Text(f"{log_stamp()} abort requested by the operator",
                                               style=f"bold {palette.WARN.hex}"))
            self.send_abort()

    @work(thread=True, group="abort")
    def send_abort(self) -> None:
        try:
            self.papp.backend.abort(self.request.vm_uuid)
        except Exception as exc:  # any failure is shown; the console stays up
            self.post_message(MigrationProgress(LogLine(
                self._last_t(), f"{log_stamp()} abort failed: {describe(exc)}")))

    def _last_t(self) -> float:
        r = self.builder.record
        return max([0.0, *(m.t for m in r.phases), *(s.t for s in r.samples)])

    def action_leave(self) -> None:
        app = self.app
        if self.running:
            # Kept (installed) while away, so the run and its record go on; Enter on the VM in
            # the list comes back here.
            if not app.is_screen_installed(self):
                app.install_screen(self, view_name(self.request.vm_uuid))
                self.papp.kept_migrations.add(view_name(self.request.vm_uuid))
            app.pop_screen()
            app.notify(f"{self.builder.record.vm}: the migration goes on; select the VM and "
                       "press Enter to watch it again", timeout=5)
            return
        app.pop_screen()
        if app.is_screen_installed(self):
            app.uninstall_screen(self)
            self.papp.kept_migrations.discard(view_name(self.request.vm_uuid))
            self.remove()
