"""End to end on the real lab (issue 6): open the console on the lab's sites, select the VM,
migrate it with teleport through the migrate dialog, watch the run complete in the migration
view, then find the run on the compare screen. Then it moves the VM back headlessly, so the lab
is left as it was found.

Runs as root with the lab's tools installed (scripts/setup.sh), on a lab instance of its own
("e") with just this VM, taken down afterwards.
`PCTELEPORT_E2E_VM` picks the VM (default `web-small`, the CI-sized `web`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import lab_instance, require
from tests.ui.conftest import wait_for

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.slow]

VM_NAME = os.environ.get("PCTELEPORT_E2E_VM", "web-small")
LAB = [sys.executable, "-m", "pcteleport.cli", "lab"]


def _lab(*args: str, timeout: float = 400) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LAB, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


INSTANCE = "e"  # a lab of its own: never moves the VMs of a lab somebody is using


@pytest.fixture(scope="module")
def lab_config(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    require(os.geteuid() == 0, "the lab needs root")
    for tool in ("libvirtd", "sshd", "qemu-system-x86_64"):
        require(shutil.which(tool) is not None or Path("/usr/sbin", tool).exists(),
                f"{tool} is not installed (scripts/setup.sh)")
    with lab_instance(INSTANCE):  # the CLI subprocesses inherit it
        try:
            _lab("down")
            up = _lab("up", "--vms", VM_NAME, "--wan", "default")
            assert up.returncode == 0, f"lab up: {up.stderr or up.stdout}"
            state = json.loads(_lab("status", "--json", "--no-measure").stdout)
            assert VM_NAME in {v["name"] for v in state.get("vms", [])}, state
            yield Path(state["config"])
        finally:
            _lab("down")


async def test_console_migrates_with_teleport_and_finds_the_run(
        lab_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pcteleport.backend import MigrationRequest
    from pcteleport.records import Mode, Result
    from pcteleport.sites.libvirt.backend import LibvirtBackend
    from pcteleport.ui.app import create_app
    from pcteleport.ui.compare_screen import CompareScreen
    from pcteleport.ui.main_screen import SitePane
    from pcteleport.ui.migrate_dialog import MigrateDialog
    from pcteleport.ui.migration_view import MigrationView

    monkeypatch.setenv("PCTELEPORT_RECORDS", str(tmp_path / "records"))
    backend = LibvirtBackend.from_config(lab_config)
    app = create_app(backend, refresh_s=2.0, export_dir=tmp_path)
    try:
        async with app.run_test(size=(120, 36)) as pilot:
            def pane_with_vm() -> SitePane | None:
                for pane in app.screen.query(SitePane):
                    rows = {k.value for k in pane.table.rows}
                    if any(v.name == VM_NAME and u in rows for u, v in pane.vms.items()):
                        return pane
                return None

            await wait_for(pilot, pane_with_vm, timeout=90, what=f"{VM_NAME} listed")
            pane = pane_with_vm()
            assert pane is not None
            source = pane.site.name
            uuid = next(u for u, v in pane.vms.items() if v.name == VM_NAME)
            await wait_for(pilot, lambda: uuid in pane.compositions, timeout=90,
                           what="its composition from the guest agent")
            pane.table.focus()
            pane.table.move_cursor(row=pane.table.get_row_index(uuid))
            await pilot.press("m")
            await wait_for(pilot, lambda: isinstance(app.screen, MigrateDialog))
            dialog = app.screen
            assert isinstance(dialog, MigrateDialog)
            destination = dialog.destination()
            assert destination is not None and destination != source
            await pilot.press("4", "ctrl+s")  # teleport
            await wait_for(pilot, lambda: isinstance(app.screen, MigrationView))
            view = app.screen
            assert isinstance(view, MigrationView)
            await wait_for(pilot, lambda: view.final is not None, timeout=600,
                           what="the migration to end")
            record = view.final
            assert record is not None
            assert record.result is Result.OK, record.error
            assert record.mode is Mode.TELEPORT and record.to_site == destination
            assert view.builder.record.samples, "no live samples reached the view"
            assert record.downtime_ms is not None and record.wan_bytes > 0
            await pilot.press("escape", "c")
            await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen))
            compare = app.screen
            assert isinstance(compare, CompareScreen)
            await wait_for(pilot, lambda: any(r.run_id == record.run_id
                                              for r in compare.records), timeout=30,
                           what="the run on the compare screen")
        # Leave the lab as found: the VM goes back where it was.
        back = backend.migrate(MigrationRequest(uuid, source, Mode.STOCK), lambda e: None)
        assert back.result is Result.OK, back.error
    finally:
        backend.close()
