"""VM detail: live composition (stacked bar and history plot), disks and replicas, agent errors,
and the VM's migration in this console, if it has one (from the App's tracker)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING, cast

from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Header, Static
from textual_plotext import PlotextPlot

from pcteleport.records import VM, Composition, Disk, ReplicaState, Site
from pcteleport.ui import palette, units
from pcteleport.ui.composition_bar import SEGMENTS, composition_bar, segment_sizes
from pcteleport.ui.console_screen import ConsoleScreen
from pcteleport.ui.failures import describe
from pcteleport.ui.messages import (
    CompositionLoaded,
    ReplicasLoaded,
    TrackedMigrationChanged,
    TrackedMigrationEnded,
    TrackedMigrationStarted,
)
from pcteleport.ui.polling import PollSchedule
from pcteleport.ui.tables import ConsoleTable
from pcteleport.ui.tracker import MigrationTracker

if TYPE_CHECKING:
    from pcteleport.ui.app import PcteleportApp

HISTORY = 600  # samples kept for the plot
REPLICA_STYLE = {
    ReplicaState.IN_SYNC: palette.OK.hex,
    ReplicaState.DIFFERS: f"bold {palette.ERROR.hex}",
    ReplicaState.MISSING: f"bold {palette.ERROR.hex}",
    ReplicaState.UNKNOWN: "dim",
}


def composition_table(c: Composition) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column()
    table.add_column(justify="right")
    table.add_column(justify="right")
    for (label, glyph, colour), size in zip(SEGMENTS, segment_sizes(c), strict=True):
        share = size / c.total if c.total else 0.0
        table.add_row(Text(f"{glyph} {label}", style=colour.hex), units.size(size),
                      units.percent(share))
    table.add_row(Text("total", style="bold"), units.size(c.total), "")
    return table


def history_legend() -> Text:
    """The history plot's title: its unit and each line, in its colour."""
    t = Text.assemble(("MiB over time", "dim"))
    for label, _, colour in (*SEGMENTS[:4], ("free", "", palette.FREE)):
        t.append("  ")
        t.append("⣿⣿", style=colour.hex)
        t.append(f" {label}")
    return t


class VMDetailScreen(ConsoleScreen):
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("m", "migrate", "Migrate"),
        Binding("r", "check_replicas", "Check replicas"),
    ]

    def __init__(self, vm: VM, sites: list[Site], composition: Composition | None,
                 tracker: MigrationTracker) -> None:
        super().__init__()
        self.vm = vm
        self.sites = sites
        self.composition = composition
        self.tracker = tracker
        self.error: str | None = None
        self.history: deque[tuple[float, Composition]] = deque(maxlen=HISTORY)
        self._start = time.monotonic()
        self._first_taken: float | None = None
        self._schedule = PollSchedule(self, lambda: self.poll())
        if composition is not None:
            self.remember(composition)

    @property
    def papp(self) -> PcteleportApp:
        return cast("PcteleportApp", self.app)

    def commands_here(self) -> Iterable[SystemCommand]:
        yield SystemCommand("Migrate this VM", "Choose destination, mode and bandwidth cap",
                            self.action_migrate)
        yield SystemCommand("Check replicas", "Compare the VM's disks with their replicas",
                            self.action_check_replicas)

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="vm-title")
        yield Static(id="vm-migration")
        yield Static(id="vm-bar")
        yield Static(id="vm-numbers")
        yield Static(history_legend(), id="vm-history-legend")
        yield PlotextPlot(id="vm-history")
        disks: ConsoleTable[Text | str] = ConsoleTable(id="vm-disks", cursor_type="none")
        disks.add_column("disk", key="disk")
        disks.add_column("size", key="size")
        for site in self.sites:  # one column per site: its replica of the disk
            disks.add_column(site.name, key=site.name)
        yield disks
        yield Static(id="vm-disks-note")
        yield Static(id="vm-agent")
        yield Footer()

    def on_mount(self) -> None:
        vm = self.vm
        self.query_one("#vm-title", Static).update(Text.assemble(
            (vm.name, "bold"), f"  {vm.uuid}  at {vm.site}  ", (str(vm.state), "bold"),
            f"  {vm.vcpus} vCPU  {units.size(vm.memory_bytes)}"))
        self.show_disks(vm.disks, None)
        self.show()
        self.tracker.observe(self)
        self.show_migration()
        self._schedule.start(self.papp)
        self.action_check_replicas()

    def on_unmount(self) -> None:
        self.tracker.unobserve(self)

    # --- its migration in this console -----------------------------------------------------

    def show_migration(self) -> None:
        from pcteleport.ui.migration_view import migration_summary

        line = self.query_one("#vm-migration", Static)
        migration = self.tracker.latest(self.vm.uuid)
        line.set_class(migration is not None, "-visible")
        if migration is None:
            return
        t = Text("migrating: " if migration.running else "last migration: ", style="bold")
        t.append_text(migration_summary(migration))
        final = migration.final
        if final is not None and final.error:
            t.append(f"\n{final.error}", style=palette.ERROR.hex)
        line.update(t)

    @on(TrackedMigrationStarted)
    @on(TrackedMigrationChanged)
    @on(TrackedMigrationEnded)
    def _migration_news(self, message: TrackedMigrationStarted | TrackedMigrationChanged
                        | TrackedMigrationEnded) -> None:
        if message.migration.request.vm_uuid == self.vm.uuid:
            self.show_migration()

    def show_disks(self, disks: list[Disk], note: str | None) -> None:
        table = self.query_one("#vm-disks", DataTable)
        table.clear()
        for disk in disks:
            cells: list[Text | str] = [Text(f"{disk.target}  {disk.path}"),
                                       units.size(disk.size_bytes) if disk.size_bytes else "–"]
            by_site = {r.site: r for r in disk.replicas}
            for site in self.sites:
                r = by_site.get(site.name)
                if site.name == self.vm.site:
                    cells.append(Text("source (live)", style="dim"))
                elif r is None:
                    cells.append(Text("not checked", style="dim"))
                else:
                    label = str(r.state) + (f": {r.detail}" if r.detail else "")
                    cells.append(Text(label, style=REPLICA_STYLE[r.state]))
            table.add_row(*cells, key=disk.target)
        if not disks:
            table.add_row("no disks reported", "", *["" for _ in self.sites])
        self.query_one("#vm-disks-note", Static).update(Text(note or "", style="dim"))

    def action_check_replicas(self) -> None:
        self.query_one("#vm-disks-note", Static).update(Text("checking replicas…", style="dim"))
        self.check_replicas()

    @work(thread=True, exclusive=True, group="replicas")
    def check_replicas(self) -> None:
        try:
            disks = self.papp.backend.replicas(self.vm.uuid)
        except Exception as exc:  # any failure is shown; the console stays up
            self.post_message(ReplicasLoaded(self.vm.uuid, None, describe(exc)))
            return
        self.post_message(ReplicasLoaded(self.vm.uuid, disks, None))

    @on(ReplicasLoaded)
    def _replicas(self, message: ReplicasLoaded) -> None:
        if message.error:
            self.show_disks(self.vm.disks, f"replicas: {message.error}")
        elif message.disks:
            self.show_disks(message.disks, None)
        else:
            self.show_disks(self.vm.disks, "this backend does not check replicas")

    # --- polling ---------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="composition-poll")
    def poll(self) -> None:
        try:
            comp = self.papp.backend.composition(self.vm.uuid)
        except Exception as exc:  # any failure is shown; the console stays up
            self.post_message(CompositionLoaded(self.vm.uuid, None, describe(exc)))
            return
        self.post_message(CompositionLoaded(self.vm.uuid, comp, None))

    @on(CompositionLoaded)
    def _loaded(self, message: CompositionLoaded) -> None:
        self.error = message.error
        if message.composition is not None:
            self.composition = message.composition
            self.remember(message.composition)
        self.show()
        self._schedule.next()

    def remember(self, c: Composition) -> None:
        # Plot against the agent's own clock when it gives one (a stalled agent then shows as a
        # gap, not as a flat line); else against when the answer arrived.
        if c.taken_at > 0:
            if self._first_taken is None:
                self._first_taken = c.taken_at
            x = c.taken_at - self._first_taken
        else:
            x = time.monotonic() - self._start
        if self.history and self.history[-1][0] == x:
            self.history[-1] = (x, c)  # the same reading again
        else:
            self.history.append((x, c))

    # --- rendering -------------------------------------------------------------------------

    def show(self) -> None:
        c = self.composition
        bar = self.query_one("#vm-bar", Static)
        width = max(10, self.size.width - 4)
        if c is None:
            bar.update(Text("no composition yet", style="dim"))
        else:
            share = Text.assemble(("restorable ", "bold"),
                                  (units.percent(c.restorable_share),
                                   f"bold {palette.RESTORABLE.hex}"),
                                  f" of {units.size(c.total)}  ·  agent: ",
                                  (str(c.source), "bold"))
            if c.restorable_age_s is not None:
                share.append(f"  ·  restorable count {c.restorable_age_s:.0f} s old",
                             style="dim")
            bar.update(Text("\n").join([composition_bar(c, width), composition_bar(c, width),
                                        share]))
            self.query_one("#vm-numbers", Static).update(composition_table(c))
        agent = self.query_one("#vm-agent", Static)
        problem = self.error or (c.error if c else None)
        agent.update(Text(f"agent: {problem}", style=f"bold {palette.ERROR.hex}") if problem
                     else Text("agent: no errors", style="dim"))
        self.plot()

    def plot(self) -> None:
        """The readings so far against the agent's clock; with one reading there is no line
        yet, and the plot says when the next comes instead of drawing an axis around a dot."""
        widget = self.query_one(PlotextPlot)
        plt = widget.plt
        plt.clear_data()
        plt.clear_figure()
        plt.xlabel("s since the first reading")
        if len(self.history) < 2:
            plt.xlim(0, 1)
            plt.ylim(0, 1)
            plt.xticks([])
            plt.yticks([])
            plt.text("one reading so far: the lines start with the next", 0.5, 0.5,
                     color=palette.MUTED.rgb, alignment="center")
        else:
            xs = [t for t, _ in self.history]
            sizes = [segment_sizes(c) for _, c in self.history]
            for (_, _, colour), i in zip(SEGMENTS[:4], range(4), strict=True):
                plt.plot(xs, [s[i] / 2**20 for s in sizes], color=colour.rgb, marker="braille")
            plt.plot(xs, [c.free / 2**20 for _, c in self.history], color=palette.FREE.rgb,
                     marker="braille")
        widget.refresh()

    def action_migrate(self) -> None:
        from pcteleport.ui.migrate_dialog import MigrateDialog
        from pcteleport.ui.migration_view import open_new_migration

        source = next((s for s in self.sites if s.name == self.vm.site), None)
        if source is None:
            return

        def start(request: object) -> None:
            from pcteleport.backend import MigrationRequest

            if isinstance(request, MigrationRequest):  # the view takes this screen's place
                open_new_migration(self, self.tracker, request, replace=True)

        self.app.push_screen(MigrateDialog(self.vm, source, self.sites, self.composition),
                             callback=start)

