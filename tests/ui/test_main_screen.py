"""Main screen: site panes, VM tables, sort, filter, cursor, polling discipline."""

from __future__ import annotations

import threading
import time

from textual.widgets import DataTable, Static

from pcteleport.backend import ServiceError
from pcteleport.records import Composition, VMState
from pcteleport.ui.app import create_app
from pcteleport.ui.main_screen import MainScreen, SitePane
from tests.ui.conftest import wait_for
from tests.ui.fake_backend import FakeBackend, make_vm, populated_backend


def panes(app) -> dict[str, SitePane]:  # type: ignore[no-untyped-def]
    return {p.site.name: p for p in app.screen.query(SitePane)}


def loaded(app) -> bool:  # type: ignore[no-untyped-def]
    ps = panes(app)
    return len(ps) == 2 and all(p.ready and p.table.row_count > 0 for p in ps.values())


def row_names(pane: SitePane) -> list[str]:
    return [str(pane.table.get_row(k)[0]) for k in pane.table.rows]


async def test_panes_show_site_headers_and_vm_rows() -> None:
    backend = populated_backend()
    backend.agent_down.add("u-tpcc")
    app = create_app(backend, refresh_s=60)
    async with app.run_test(size=(160, 40)) as pilot:
        await wait_for(pilot, lambda: loaded(app), what="both sites loaded")
        tokyo = panes(app)["tokyo"]
        header = str(tokyo.query_one(".site-header", Static).render())
        for part in ("tokyo", "10.77.0.1", "libvirt 9.0.0", "connected", "WAN → osaka",
                     "94.4 Mbit/s", "RTT 50 ms", "100mbit-50ms"):
            assert part in header, part
        table = tokyo.table
        assert [k.value for k in table.rows] == ["u-idle", "u-tpcc", "u-web"]  # by name
        web = [str(c) for c in table.get_row("u-web")]
        assert web[:4] == ["web", "running", "1", "1.0 GiB"]
        assert web[5] == "29%" and web[6] == "module"
        assert str(table.get_row("u-idle")[5]) == "–"  # shut off: no composition asked
        assert str(table.get_row("u-tpcc")[6]) == "no agent"
        assert "composition:u-idle" not in backend.calls
        assert not app.screen.query_one("#sites").has_class("-stacked")  # side by side at 160


async def test_panes_stack_on_an_80_column_terminal() -> None:
    app = create_app(populated_backend(), refresh_s=60)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: loaded(app))
        assert app.screen.query_one("#sites").has_class("-stacked")
        await pilot.pause(0.1)
        a, b = panes(app).values()
        assert a.region.x == b.region.x and a.region.y != b.region.y


async def test_sort_cycles_and_cursor_stays_on_the_same_vm_across_refreshes() -> None:
    backend = populated_backend()
    app = create_app(backend, refresh_s=0.05)
    async with app.run_test(size=(160, 40)) as pilot:
        await wait_for(pilot, lambda: loaded(app))
        tokyo = panes(app)["tokyo"]
        tokyo.table.focus()
        await pilot.press("down", "down")
        assert tokyo.selected_uuid() == "u-web"
        # A new VM sorting before web appears on the next poll: the cursor follows web.
        backend.vms_by_site["tokyo"].append(make_vm("aaa", "u-aaa"))
        backend.compositions["u-aaa"] = backend.compositions["u-web"]
        await wait_for(pilot, lambda: tokyo.table.row_count == 4, what="new VM")
        assert tokyo.selected_uuid() == "u-web"
        await pilot.press("s")  # state
        assert app.screen.sort_by == "state"
        assert row_names(tokyo)[0] == "aaa" and row_names(tokyo)[-1] == "idle"
        await pilot.press("s", "s")  # restorable
        assert app.screen.sort_by == "restorable"
        assert row_names(tokyo)[0] == "tpcc"
        assert tokyo.selected_uuid() == "u-web"


async def test_slash_filters_by_name_and_escape_clears() -> None:
    app = create_app(populated_backend(), refresh_s=60)
    async with app.run_test(size=(160, 40)) as pilot:
        await wait_for(pilot, lambda: loaded(app))
        await pilot.press("slash", "t", "p")
        assert row_names(panes(app)["tokyo"]) == ["tpcc"]
        assert panes(app)["osaka"].table.row_count == 0
        await pilot.press("enter")  # keeps the filter, back to the table
        assert isinstance(app.focused, DataTable)
        assert row_names(panes(app)["tokyo"]) == ["tpcc"]
        await pilot.press("escape")
        assert row_names(panes(app)["tokyo"]) == ["idle", "tpcc", "web"]


class CountingBackend(FakeBackend):
    """Slow inventory calls that record how many run at once."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.active = 0
        self.most_active = 0
        self.vms_calls = 0
        self.count_lock = threading.Lock()

    def vms(self, site: str):  # type: ignore[no-untyped-def]
        with self.count_lock:
            self.active += 1
            self.vms_calls += 1
            self.most_active = max(self.most_active, self.active)
        time.sleep(0.15)
        try:
            return super().vms(site)
        finally:
            with self.count_lock:
                self.active -= 1


async def test_polls_never_overlap_and_pause_stops_them() -> None:
    backend = CountingBackend(sites_list=populated_backend().sites_list[:1])
    backend.vms_by_site = {"tokyo": [make_vm("web", "u-web")]}
    backend.compositions = populated_backend().compositions
    app = create_app(backend, refresh_s=0.5)
    async with app.run_test(size=(120, 30)) as pilot:
        app.refresh_s = 0.01  # far shorter than a poll takes
        await wait_for(pilot, lambda: backend.vms_calls >= 5, what="several polls")
        assert backend.most_active == 1
        await pilot.press("space")
        assert app.paused
        await pilot.pause(0.4)
        frozen = backend.vms_calls
        await pilot.pause(0.5)
        assert backend.vms_calls == frozen
        await pilot.press("space")
        await wait_for(pilot, lambda: backend.vms_calls > frozen + 1, what="polls resume")
        assert backend.most_active == 1


async def test_plus_and_minus_change_the_refresh_interval() -> None:
    app = create_app(populated_backend(), refresh_s=2.0)
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.press("minus")
        assert app.refresh_s == 5.0
        await pilot.press("plus", "plus")
        assert app.refresh_s == 1.0
        assert "every 1 s" in str(app.screen.query_one("#status", Static).render())


class BrokenSiteBackend(FakeBackend):
    def vms(self, site: str):  # type: ignore[no-untyped-def]
        if site == "osaka":
            raise ServiceError("osaka unreachable over SSH: check the lab is up")
        return super().vms(site)


async def test_an_unreachable_site_says_what_to_do_and_the_other_still_works() -> None:
    backend = BrokenSiteBackend()
    backend.vms_by_site = {"tokyo": [make_vm("web", "u-web")]}
    backend.compositions = {"u-web": Composition(total=1, free=1)}
    app = create_app(backend, refresh_s=60)
    async with app.run_test(size=(160, 40)) as pilot:
        await wait_for(pilot, lambda: "osaka" in panes(app) and panes(app)["osaka"].error)
        osaka = panes(app)["osaka"]
        assert osaka.has_class("-error") and "check the lab is up" in osaka.border_subtitle
        await wait_for(pilot, lambda: panes(app)["tokyo"].table.row_count == 1)


async def test_migrate_refuses_a_stopped_vm() -> None:
    backend = populated_backend()
    app = create_app(backend, refresh_s=60)
    async with app.run_test(size=(160, 40)) as pilot:
        await wait_for(pilot, lambda: loaded(app))
        panes(app)["tokyo"].table.focus()
        assert panes(app)["tokyo"].selected_uuid() == "u-idle"
        await pilot.press("m")
        assert isinstance(app.screen, MainScreen)
        assert backend.vms_by_site["tokyo"][2].state is VMState.SHUTOFF


class BuggyBackend(FakeBackend):
    """A backend that lets a library exception escape (a bug in it, not in the console)."""

    def composition(self, vm_uuid: str) -> Composition:
        raise OSError("Cannot write data: Broken pipe")


async def test_a_backend_bug_is_shown_and_the_console_stays_up() -> None:
    backend = BuggyBackend()
    backend.vms_by_site = {"tokyo": [make_vm("web", "u-web")]}
    app = create_app(backend, refresh_s=60)
    async with app.run_test(size=(160, 40)) as pilot:
        await wait_for(pilot, lambda: "tokyo" in panes(app)
                       and panes(app)["tokyo"].table.row_count == 1)
        problem = panes(app)["tokyo"].problems["u-web"]
        assert problem.startswith("backend bug, please report it: OSError: Cannot write data")
        assert str(panes(app)["tokyo"].table.get_row("u-web")[6]) == "no agent"


async def test_abort_from_the_main_screen_only_for_a_migrating_vm() -> None:
    from pcteleport.ui.confirm import ConfirmScreen

    backend = populated_backend()
    web = next(v for v in backend.vms_by_site["tokyo"] if v.name == "web")
    web.state = VMState.MIGRATING
    app = create_app(backend, refresh_s=60)
    async with app.run_test(size=(160, 40)) as pilot:
        await wait_for(pilot, lambda: loaded(app))
        await pilot.press("a")  # idle is selected: not migrating
        assert isinstance(app.screen, MainScreen) and backend.aborted == []
        await pilot.press("down", "down", "a")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await wait_for(pilot, lambda: backend.aborted == ["u-web"], what="abort sent")
