"""The main screen: one pane per site, each with its header and its VM table, and the
migrations this console runs (from the App's tracker)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Container, Vertical
from textual.widgets import DataTable, Footer, Header, Input, Static

from pcteleport.records import VM, Composition, ConnectionState, Site, VMState
from pcteleport.ui import palette, units
from pcteleport.ui.composition_bar import composition_bar, legend
from pcteleport.ui.console_screen import ConsoleScreen
from pcteleport.ui.failures import describe
from pcteleport.ui.messages import (
    InventoryFailed,
    InventoryLoaded,
    SitesFailed,
    SitesLoaded,
    TrackedMigrationChanged,
    TrackedMigrationEnded,
    TrackedMigrationStarted,
)
from pcteleport.ui.polling import PollSchedule
from pcteleport.ui.tables import ConsoleTable
from pcteleport.ui.tracker import MigrationTracker

if TYPE_CHECKING:
    from pcteleport.ui.app import PcteleportApp

BAR_WIDTH = 14
SIDE_BY_SIDE_WIDTH = 150  # two VM tables (~75 columns each) fit without scrolling
SORTS = ("name", "state", "memory", "restorable")
STATE_STYLE = {
    VMState.RUNNING: f"bold {palette.OK.hex}",
    VMState.MIGRATING: f"bold {palette.WARN.hex}",
    VMState.PAUSED: palette.WARN.hex,
    VMState.CRASHED: f"bold {palette.ERROR.hex}",
}
CONNECTION_STYLE = {
    ConnectionState.CONNECTED: palette.OK.hex,
    ConnectionState.REPLAY: palette.INFO.hex,
    ConnectionState.CONNECTING: palette.WARN.hex,
    ConnectionState.DISCONNECTED: palette.ERROR.hex,
    ConnectionState.ERROR: f"bold {palette.ERROR.hex}",
}


@dataclass(frozen=True)
class RowOrder:
    """Which VMs a pane lists and in what order; the main screen owns it and hands it down."""

    sort_by: str = SORTS[0]
    filter_text: str = ""

    def shows(self, vm: VM) -> bool:
        return self.filter_text.lower() in vm.name.lower()


def site_header(site: Site, peers: list[str]) -> Text:
    t = Text()
    t.append(site.name, style="bold")
    t.append(f"  {site.host}")
    if site.libvirt_version:
        t.append(f"  libvirt {site.libvirt_version}")
    t.append("  ● ", style=CONNECTION_STYLE.get(site.connection, ""))
    t.append(str(site.connection), style=CONNECTION_STYLE.get(site.connection, ""))
    for peer in peers:
        link = site.link_to(peer)
        if link is None:
            continue
        t.append(f"\nWAN → {peer}: ")
        t.append(units.link_rate(link.rate_bytes_per_s), style="bold")
        t.append(f", RTT {'–' if link.rtt_ms is None else f'{link.rtt_ms:.0f} ms'}")
        if link.profile:
            t.append(f"  ({link.profile})", style="dim")
    if site.error:
        t.append(f"\n{site.error}", style=f"bold {palette.ERROR.hex}")
    return t


class SitePane(Vertical):
    """A site's header and VM table. It polls its own site, one poll at a time: the next poll is
    scheduled only when the previous one has finished (a slow site never piles up requests)."""

    def __init__(self, site: Site, peers: list[str], order: RowOrder) -> None:
        super().__init__(id=f"site-{site.name}", classes="site-pane")
        self.site = site
        self.peers = peers
        self.order = order
        self.vms: dict[str, VM] = {}
        self.compositions: dict[str, Composition] = {}
        self.problems: dict[str, str] = {}
        self.error: str | None = None
        self._schedule = PollSchedule(self, lambda: self.poll())

    @property
    def papp(self) -> PcteleportApp:
        return cast("PcteleportApp", self.app)

    def compose(self) -> ComposeResult:
        yield Static(site_header(self.site, self.peers), classes="site-header")
        # The cursor row keeps each cell's own colours, so the composition bar stays readable.
        table: ConsoleTable[Text | str] = ConsoleTable(cursor_type="row", zebra_stripes=True,
                                                       cursor_foreground_priority="renderable")
        table.add_column("VM", key="name")
        table.add_column("state", key="state")
        table.add_column("vCPU", key="vcpus")
        table.add_column("memory", key="memory")
        table.add_column("composition", key="bar", width=BAR_WIDTH)
        table.add_column("rest.", key="restorable")
        table.add_column("agent", key="agent")
        yield table

    def on_mount(self) -> None:
        # The first site's table takes the keys (focus() is deferred: ask who is first).
        if self.screen.focused is None and self.screen.query(SitePane).first() is self:
            self.table.focus()
        self._schedule.start(self.papp)

    def set_site(self, site: Site, peers: list[str]) -> None:
        self.site, self.peers = site, peers
        self.query_one(".site-header", Static).update(site_header(site, peers))

    def set_order(self, order: RowOrder) -> None:
        self.order = order
        self.render_rows()

    # --- polling ---------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="site-poll")
    def poll(self) -> None:
        backend = self.papp.backend
        try:
            vms = backend.vms(self.site.name)
        except Exception as exc:  # any failure is shown; the console stays up
            self.post_message(InventoryFailed(self.site.name, describe(exc)))
            return
        compositions: dict[str, Composition] = {}
        problems: dict[str, str] = {}
        for vm in vms:
            if vm.state not in (VMState.RUNNING, VMState.MIGRATING):
                continue
            try:
                compositions[vm.uuid] = backend.composition(vm.uuid)
            except Exception as exc:  # any failure is shown; the console stays up
                problems[vm.uuid] = describe(exc)
        self.post_message(InventoryLoaded(self.site.name, vms, compositions, problems))

    def _schedule_next(self) -> None:
        self._schedule.next()

    @on(InventoryLoaded)
    def _loaded(self, message: InventoryLoaded) -> None:
        message.stop()
        self.error = None
        self.vms = {vm.uuid: vm for vm in message.vms}
        # Keep the last composition of a VM whose agent missed one poll, but say so.
        self.compositions = {**{k: v for k, v in self.compositions.items() if k in self.vms},
                             **message.compositions}
        self.problems = message.problems
        self.render_rows()
        self._schedule_next()

    @on(InventoryFailed)
    def _failed(self, message: InventoryFailed) -> None:
        message.stop()
        self.error = message.error
        self.render_rows()
        self._schedule_next()

    # --- table -----------------------------------------------------------------------------

    @property
    def table(self) -> DataTable[Text | str]:
        return self.query_one(DataTable)

    @property
    def ready(self) -> bool:
        """Composed: a pane mounted this very moment has no table yet."""
        return bool(self.query(DataTable))

    def selected_uuid(self) -> str | None:
        if not self.ready:
            return None
        table = self.table
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        return key.value

    def _row(self, vm: VM) -> list[Text | str]:
        comp = self.compositions.get(vm.uuid)
        if vm.uuid in self.problems:
            agent = Text("no agent", style=palette.ERROR.hex)
        elif comp is None:
            agent = Text("–", style="dim")
        elif comp.error:
            agent = Text(f"{comp.source}!", style=palette.WARN.hex)
        else:
            agent = Text(str(comp.source))
        return [
            Text(vm.name, style="bold"),
            Text(str(vm.state), style=STATE_STYLE.get(vm.state, "dim")),
            str(vm.vcpus),
            units.size(vm.memory_bytes),
            composition_bar(comp, BAR_WIDTH),
            units.percent(comp.restorable_share) if comp else "–",
            agent,
        ]

    def _sort_key(self, vm: VM) -> tuple[object, ...]:
        by = self.order.sort_by
        comp = self.compositions.get(vm.uuid)
        if by == "state":
            return (str(vm.state), vm.name)
        if by == "memory":
            return (-vm.memory_bytes, vm.name)
        if by == "restorable":
            return (-(comp.restorable_share if comp else -1.0), vm.name)
        return (vm.name,)

    def render_rows(self) -> None:
        """Bring the table in line with self.vms, keeping the cursor on the same VM."""
        if not self.ready:
            return  # its first poll renders it
        wanted = sorted((vm for vm in self.vms.values() if self.order.shows(vm)),
                        key=self._sort_key)
        table = self.table
        keep = self.selected_uuid()
        current = [k.value for k in table.rows]
        order = [vm.uuid for vm in wanted]
        if current == order:
            for vm in wanted:
                for col, cell in zip(table.columns, self._row(vm), strict=True):
                    table.update_cell(vm.uuid, col, cell)
        else:
            table.clear()
            for vm in wanted:
                table.add_row(*self._row(vm), key=vm.uuid)
        if keep in order:
            table.move_cursor(row=order.index(keep), animate=False)
        self.border_subtitle = self.error or ""
        self.set_class(bool(self.error) or self.site.connection is ConnectionState.ERROR,
                       "-error")


class MainScreen(ConsoleScreen):
    BINDINGS = [
        Binding("enter", "details", "Details"),
        Binding("m", "migrate", "Migrate"),
        Binding("a", "abort", "Abort", show=False),
        Binding("slash", "filter", "Filter"),
        Binding("s", "sort", "Sort"),
        Binding("r", "refresh", "Refresh", show=False),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    def __init__(self, tracker: MigrationTracker) -> None:
        super().__init__()
        self.tracker = tracker
        self.order = RowOrder()
        self.sites: list[Site] = []
        self._schedule = PollSchedule(self, lambda: self.poll_sites())

    @property
    def papp(self) -> PcteleportApp:
        return cast("PcteleportApp", self.app)

    @property
    def sort_by(self) -> str:
        return self.order.sort_by

    @property
    def filter_text(self) -> str:
        return self.order.filter_text

    def commands_here(self) -> Iterable[SystemCommand]:
        yield SystemCommand("Migrate selected VM", "Choose destination, mode and bandwidth cap",
                            self.action_migrate)
        yield SystemCommand("Show VM details", "Composition history, disks and replicas",
                            self.action_details)
        yield SystemCommand("Filter VMs", "Show only VMs whose name matches", self.action_filter)
        yield SystemCommand("Sort VMs", "Cycle the sort order", self.action_sort)

    def compose(self) -> ComposeResult:
        yield Header()
        yield Container(Static("connecting to sites…", id="sites-message"), id="sites")
        yield Static(id="migrations")
        # Disabled while hidden, so it never takes the focus (or the keys) from the tables.
        yield Input(placeholder="filter VMs by name (enter keeps it, esc clears)", id="filter",
                    disabled=True)
        yield Static(id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.tracker.observe(self)
        # The status line says how often and whether it polls: follow the App's settings.
        self.watch(self.papp, "refresh_s", self._settings_changed, init=False)
        self.watch(self.papp, "paused", self._settings_changed, init=False)
        self.update_status()
        self.show_migrations()
        self._schedule.start(self.papp)

    def on_unmount(self) -> None:
        self.tracker.unobserve(self)

    def _settings_changed(self) -> None:
        self.update_status()

    def on_resize(self) -> None:
        # Side by side where there is room, stacked on an 80-column terminal.
        self.query_one("#sites").set_class(
            self.size.width < SIDE_BY_SIDE_WIDTH or len(self.sites) == 1, "-stacked")

    # --- sites poll ------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="sites-poll")
    def poll_sites(self) -> None:
        try:
            sites = self.papp.backend.sites()
        except Exception as exc:  # any failure is shown; the console stays up
            self.post_message(SitesFailed(describe(exc)))
            return
        self.post_message(SitesLoaded(sites))

    def _schedule_next(self) -> None:
        self._schedule.next()

    @on(SitesLoaded)
    def _sites_loaded(self, message: SitesLoaded) -> None:
        self.sites = message.sites
        container = self.query_one("#sites")
        names = [s.name for s in message.sites]
        for msg in self.query("#sites-message"):
            msg.remove()
        for site in message.sites:
            peers = [n for n in names if n != site.name]
            panes = [p for p in self.query(SitePane) if p.site.name == site.name]
            if panes:
                panes[0].set_site(site, peers)
            else:
                container.mount(SitePane(site, peers, self.order))
        if not message.sites:
            container.mount(Static("no sites configured", id="sites-message"))
        self.on_resize()
        self.update_status()
        self._schedule_next()

    @on(SitesFailed)
    def _sites_failed(self, message: SitesFailed) -> None:
        self.notify(message.error, severity="error", timeout=6)
        self._schedule_next()

    def update_status(self) -> None:
        t = Text()
        t.append_text(legend())
        t.append(f"│ every {self.papp.refresh_s:g} s", style="dim")
        if self.papp.paused:
            t.append("  PAUSED", style=f"bold {palette.WARN.hex}")
        t.append(f"  sort: {self.sort_by}", style="dim")
        if self.filter_text:
            t.append(f"  filter: {self.filter_text}", style="bold")
        self.query_one("#status", Static).update(t)

    # --- selection -------------------------------------------------------------------------

    def focused_pane(self) -> SitePane | None:
        focused = self.focused
        for pane in self.query(SitePane):
            if focused is not None and pane.ready and focused is pane.table:
                return pane
        panes = list(self.query(SitePane))
        return panes[0] if panes else None

    def selected(self) -> tuple[SitePane, VM] | None:
        pane = self.focused_pane()
        if pane is None:
            return None
        uuid = pane.selected_uuid()
        if uuid is None or uuid not in pane.vms:
            return None
        return pane, pane.vms[uuid]

    # --- the tracker's migrations ----------------------------------------------------------

    def show_migrations(self) -> None:
        """The migrations that want the operator's eyes: running, or ended unseen."""
        from pcteleport.ui.migration_view import migration_summary

        lines = [m for m in self.tracker.migrations() if m.wants_attention]
        strip = self.query_one("#migrations", Static)
        strip.set_class(bool(lines), "-visible")
        t = Text()
        for i, m in enumerate(lines):
            if i:
                t.append("\n")
            t.append("⇄ " if m.running else "■ ", style="bold")
            t.append_text(migration_summary(m))
            t.append("  (enter on the VM: " + ("watch it)" if m.running else "see how it ended)"),
                     style="dim")
        strip.update(t)

    @on(TrackedMigrationStarted)
    @on(TrackedMigrationChanged)
    def _migration_news(self) -> None:
        self.show_migrations()

    @on(TrackedMigrationEnded)
    def _migration_ended(self, message: TrackedMigrationEnded) -> None:
        self.show_migrations()
        # The VM has moved (or not): ask both sites now rather than at the next poll.
        r = message.migration.record
        for pane in self.query(SitePane):
            if pane.site.name in (r.from_site, r.to_site):
                pane.poll()

    @on(DataTable.RowSelected)
    def _row_selected(self, _: DataTable.RowSelected) -> None:
        self.action_details()

    # --- actions ---------------------------------------------------------------------------

    def action_details(self) -> None:
        from pcteleport.ui.migration_view import MigrationView
        from pcteleport.ui.vm_detail import VMDetailScreen

        picked = self.selected()
        if picked is None:
            self.notify("no VM selected", severity="warning")
            return
        pane, vm = picked
        migration = self.tracker.latest(vm.uuid)
        if migration is not None and migration.wants_attention:  # running, or ended unseen
            self.app.push_screen(MigrationView(migration, self.tracker))
            return
        self.app.push_screen(VMDetailScreen(vm, self.sites, pane.compositions.get(vm.uuid),
                                            self.tracker))

    def action_migrate(self) -> None:
        from pcteleport.ui.migrate_dialog import MigrateDialog

        picked = self.selected()
        if picked is None:
            self.notify("no VM selected", severity="warning")
            return
        pane, vm = picked
        if vm.state is not VMState.RUNNING:
            self.notify(f"{vm.name} is {vm.state}: only a running VM migrates live",
                        severity="warning")
            return
        self.app.push_screen(
            MigrateDialog(vm, pane.site, self.sites, pane.compositions.get(vm.uuid)),
            callback=self._start_migration)

    def _start_migration(self, request: object) -> None:
        from pcteleport.backend import MigrationRequest
        from pcteleport.ui.migration_view import open_new_migration

        if isinstance(request, MigrationRequest):
            open_new_migration(self, self.tracker, request)

    def action_abort(self) -> None:
        """Abort a migration of the selected VM: one this console runs, or one started elsewhere
        (CLI, another console) — the backend knows which runs are in flight."""
        from pcteleport.ui.confirm import ConfirmScreen

        picked = self.selected()
        ours = self.tracker.latest(picked[1].uuid) if picked is not None else None
        if picked is None or (picked[1].state is not VMState.MIGRATING
                              and not (ours is not None and ours.running)):
            self.notify("no migrating VM selected", severity="warning")
            return
        vm = picked[1]

        def answer(yes: bool | None) -> None:
            if yes:
                self.tracker.abort(vm.uuid)

        self.app.push_screen(ConfirmScreen(f"Abort the migration of {vm.name}?",
                                           "The source keeps running."), callback=answer)

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.disabled = False
        box.add_class("-visible")
        box.focus()

    def set_order(self, order: RowOrder) -> None:
        """Sort or filter changed: hand the new order to every pane."""
        self.order = order
        for pane in self.query(SitePane):
            pane.set_order(order)
        self.update_status()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.set_order(dataclasses.replace(self.order, filter_text=event.value.strip()))

    @on(Input.Submitted, "#filter")
    def _filter_done(self, _: Input.Submitted) -> None:
        box = self.query_one("#filter", Input)
        box.remove_class("-visible")
        box.disabled = True
        pane = self.focused_pane()
        if pane is not None and pane.ready:
            pane.table.focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        box.remove_class("-visible")
        box.disabled = True
        pane = self.focused_pane()
        if pane is not None and pane.ready:
            pane.table.focus()

    def action_sort(self) -> None:
        following = SORTS[(SORTS.index(self.sort_by) + 1) % len(SORTS)]
        self.set_order(dataclasses.replace(self.order, sort_by=following))

    def action_refresh(self) -> None:
        self.poll_sites()
        for pane in self.query(SitePane):
            pane.poll()

    def on_screen_resume(self) -> None:
        self.update_status()
