"""Migrations end to end through libvirt on the lab, in every mode, and every failure the
operator can meet: abort, a destination relay killed mid-stream, a lying map, a diverged
replica. After each failure the source VM still runs with its data intact and the error says
what happened.

One lab instance of its own ("m": it never touches the default lab), one small web VM, the
fast WAN profile so each migration takes seconds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pcteleport.records import LogLine, MigrationRecord, Mode, Result
from tests.conftest import lab_backend, require

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.slow]

INSTANCE = "m"
VM = "web-small"
ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pcteleport.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    require(os.geteuid() == 0, "the lab needs root")
    require(shutil.which("qemu-system-x86_64") is not None, "QEMU is not installed")
    with lab_backend(INSTANCE, VM, tmp_path_factory.mktemp("records")) as b:
        yield b


def migrate(backend, to: str, mode: Mode, cap: float | None = None,
            during=None) -> MigrationRecord:
    from pcteleport.backend import MigrationRequest

    events: list = []

    def on_event(ev: object) -> None:
        events.append(ev)
        if during is not None:
            during(ev)

    rec = backend.migrate(MigrationRequest(VM, to, mode, cap), on_event)
    assert rec.log == [e for e in events if isinstance(e, LogLine)]
    return rec


def where(backend) -> dict[str, str]:
    out = {}
    for site in ("tokyo", "osaka"):
        for vm in backend.vms(site):
            if vm.name == VM:
                out[site] = str(vm.state)
    return out


def guest_shell(backend, site: str, script: str) -> str:
    from pcteleport.lab import guestshell

    host_dir = Path(backend.sites_rt[site].config.lab["host_dir"])
    status, out = guestshell.run(host_dir / "agents" / f"{VM}.shell.sock", script, timeout=120)
    assert status == 0, out
    return out


def assert_intact_at(backend, site: str) -> None:
    """The VM runs at `site` only, its agent answers, its cached pages match its disk."""
    assert where(backend) == {site: "running"}
    result = backend.agent(backend.sites_rt[site], VM).call("verify", {"disk": "pctdata"},
                                                           timeout=300)
    assert result["mismatches"] == []


def warm(backend, site: str) -> int:
    """Re-read the data disk into the page cache; the restorable bytes the agent then sees."""
    guest_shell(backend, site, "/data/.pcteleport/warm")
    _, header = backend.agent(backend.sites_rt[site], VM).restorable_map("pctdata")
    return int(header["pages"]) * 4096


def test_every_mode_migrates_there_and_back(backend) -> None:
    wan: dict[Mode, int] = {}
    restorable = warm(backend, "tokyo")
    assert restorable > 16 << 20  # web-small's ~24 MB of HTML is cached
    for mode in (Mode.STOCK, Mode.TELEPORT, Mode.ZSTD, Mode.DROP_CACHE):
        if mode is Mode.DROP_CACHE:
            warm(backend, "tokyo")
        there = migrate(backend, "osaka", mode)
        assert there.result is Result.OK, there.error
        assert there.downtime_ms and there.downtime_ms > 0
        assert there.total_s and there.total_s > 0
        marks = {m.phase: m.t for m in there.phases}
        phases = list(marks)
        assert phases[0] == "prepare" and phases[-1] == "done"
        if marks["resume"] - marks["iterative"] > 1.5:  # one sample a second while it ran
            assert there.samples
        assert any(p.phase == "done" for p in there.phases)
        # the checks at the destination, in order, then the last line
        texts = [line.text for line in there.log]
        verified = max(i for i, t in enumerate(texts) if "verified at osaka" in t)
        assert "writes checked at osaka" in texts[verified + 1]
        assert "finished successfully" in texts[-1]
        assert there.write_check is not None and there.write_check.failed == 0
        assert_intact_at(backend, "osaka")
        wan[mode] = there.wan_bytes
        if mode is Mode.TELEPORT:
            assert there.pages.teleported * 4096 >= restorable * 0.9
        back = migrate(backend, "tokyo", mode)
        assert back.result is Result.OK, back.error
        assert_intact_at(backend, "tokyo")
        summary = there.summary()
        assert set(summary) == {"vm", "from", "to", "mode", "result", "total_s", "downtime_ms",
                                "wan_bytes", "guest_bytes", "pages", "map_refreshes",
                                "wan_encryption", "memory_encryption", "disk_encryption",
                                "switchover_sizing", "disk_wan_bytes", "memory_wan_bytes", "disks",
                                "predicted_wan_bytes", "predicted_total_s", "t_min_s",
                                "runs_at", "guest_crashed", "ram_pages_differing",
                                "writes_checked", "writes_lost", "relay_cpu_s_per_gb",
                                "migration_cpu_s_per_gb"}
        assert summary["disk_wan_bytes"] + summary["memory_wan_bytes"] == there.wan_bytes
        assert summary["runs_at"] == "osaka" and summary["guest_crashed"] is False
        # teleport: memory in its relays' frames, disks through its tunnel; else libvirt's TLS
        crypt = "aes-256-gcm" if mode is Mode.TELEPORT else "tls"
        assert (summary["memory_encryption"], summary["disk_encryption"],
                summary["wan_encryption"]) == (crypt, crypt, crypt)
        # the relays' CPU per GB of guest memory: teleport only, both ends
        cpu = summary["relay_cpu_s_per_gb"]
        assert (cpu["send"] > 0 and cpu["recv"] > 0) if mode is Mode.TELEPORT else cpu is None
    # Teleport saves at least the restorable share the agent reported; the others save too.
    assert wan[Mode.TELEPORT] <= wan[Mode.STOCK] - restorable
    assert wan[Mode.ZSTD] < wan[Mode.STOCK]
    assert wan[Mode.DROP_CACHE] < wan[Mode.STOCK] - restorable * 0.5
    assert len(backend.records().records) == 8


def test_headless_migrate_prints_progress_and_a_json_summary(backend) -> None:
    import json

    out = _cli("migrate", VM, "--to", "osaka", "--mode", "teleport", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["result"] == "ok" and summary["to"] == "osaka"
    assert "migration active" in out.stderr and "finished successfully" in out.stderr
    back = _cli("migrate", VM, "--to", "tokyo", "--mode", "stock")
    assert back.returncode == 0, back.stderr
    assert "finished successfully" in back.stdout
    bad = _cli("migrate", VM, "--to", "kyoto")
    assert bad.returncode == 2 and "no site named 'kyoto'" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_abort_mid_migration_leaves_the_source_running(backend) -> None:
    def abort_once_running(ev: object) -> None:
        if getattr(ev, "phase", None) == "iterative":
            threading.Timer(1.5, backend.abort, args=(VM,)).start()

    rec = migrate(backend, "osaka", Mode.STOCK, cap=4 * 2**20, during=abort_once_running)
    assert rec.result is Result.ABORTED
    assert "aborted" in (rec.error or "")
    assert f"VM {VM} is running at tokyo" in rec.log[-1].text
    time.sleep(1)
    assert_intact_at(backend, "tokyo")


def test_killed_destination_relay_fails_cleanly(backend) -> None:
    warm(backend, "tokyo")
    osaka = backend.sites_rt["osaka"]

    def kill_recv_relay(ev: object) -> None:
        if getattr(ev, "phase", None) == "iterative":
            # this lab's relay only: the sites share the host's PIDs with every other lab
            mine = f"pcteleport.cli relay recv --listen {osaka.config.wan_addr}:"
            osaka.host.run(["pkill", "-f", mine], timeout=20)

    rec = migrate(backend, "osaka", Mode.TELEPORT, cap=8 * 2**20, during=kill_recv_relay)
    assert rec.result is Result.FAILED
    assert rec.error and rec.error.startswith("relay recv at osaka: ")
    assert len(rec.error) > len("relay recv at osaka: ")  # says what happened to it
    assert f"VM {VM} is running at tokyo" in rec.log[-1].text
    assert_intact_at(backend, "tokyo")


def test_lying_map_only_costs_bytes(backend, monkeypatch) -> None:
    """A map whose blocks are all wrong: the encoder checks every page, sends them whole."""
    from pcteleport.sites.guest_agent import GuestAgent

    warm(backend, "tokyo")
    real = GuestAgent.restorable_map

    def lying(self, disk):
        text, header = real(self, disk)
        shifted = []
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                shifted.append(line)
                continue
            gpa, off, length = (int(w, 0) for w in line.split())
            shifted.append(f"{gpa:#x} {off + 8192:#x} {length}")
        return "\n".join(shifted) + "\n", header

    monkeypatch.setattr(GuestAgent, "restorable_map", lying)
    rec = migrate(backend, "osaka", Mode.TELEPORT)
    assert rec.result is Result.OK, rec.error
    assert rec.pages.teleported < 50  # only pages that happen to equal the shifted block
    assert_intact_at(backend, "osaka")
    monkeypatch.undo()
    assert migrate(backend, "tokyo", Mode.STOCK).result is Result.OK


def test_map_taken_while_the_migration_starts(backend, monkeypatch) -> None:
    """The map comes from the guest while the relays start and libvirt prepares the
    destination: a slow one still teleports; one that never comes fails the run cleanly."""
    from pcteleport.errors import PcteleportError
    from pcteleport.sites.guest_agent import GuestAgent

    warm(backend, "tokyo")
    real = GuestAgent.restorable_map

    def slow(self, disk):
        time.sleep(4)
        return real(self, disk)

    monkeypatch.setattr(GuestAgent, "restorable_map", slow)
    rec = migrate(backend, "osaka", Mode.TELEPORT)
    assert rec.result is Result.OK, rec.error
    assert rec.pages.teleported > 2000  # web-small's cached HTML, restored at osaka
    iterative = next(m.t for m in rec.phases if m.phase == "iterative")
    assert iterative < 4  # libvirt started before the map came
    assert any("verified at osaka" in line.text for line in rec.log)
    assert_intact_at(backend, "osaka")

    def broken(self, disk):
        time.sleep(2)
        raise PcteleportError("the guest agent went away")

    monkeypatch.setattr(GuestAgent, "restorable_map", broken)
    rec = migrate(backend, "tokyo", Mode.TELEPORT)
    assert rec.result is Result.FAILED
    assert "no restorable map from the guest agent: the guest agent went away" in rec.error
    assert f"VM {VM} is running at osaka" in rec.log[-1].text
    assert_intact_at(backend, "osaka")
    # no relay of this lab left behind (the sites share the host's PIDs with every other lab;
    # this lab's relays name its WAN addresses)
    addrs = "|".join(rt.config.wan_addr.replace(".", "[.]") for rt in backend.sites_rt.values())
    for site in ("tokyo", "osaka"):
        left = backend.sites_rt[site].host.run(
            ["pgrep", "-af", f"pcteleport.cli relay .*({addrs}):"], timeout=20)
        assert left.stdout.strip() == "", left.stdout
    monkeypatch.undo()
    assert migrate(backend, "tokyo", Mode.STOCK).result is Result.OK


def test_diverged_replica_fails_before_the_destination_resumes(backend) -> None:
    """A block of the destination's base image that differs from the source's while its
    checksum file still says otherwise (bit rot keeps the file's time): never used; the
    migration fails with the block named, the VM goes on at the source with its data intact,
    and the overlays made at the destination are gone."""
    assert warm(backend, "tokyo") > 0
    text, _ = backend.agent(backend.sites_rt["tokyo"], VM).restorable_map("pctdata")
    first = next(line for line in text.splitlines() if line and not line.startswith("#"))
    offset = int(first.split()[1], 0)
    (vdb,) = [d for d in backend.disk_plan(VM, "osaka") if d.target == "vdb"]
    host_dir = Path(backend.sites_rt["osaka"].config.lab["host_dir"])
    replica = host_dir / "images" / Path(vdb.base).name
    stamp = replica.stat()

    def put(data: bytes) -> None:
        with open(replica, "r+b") as f:
            f.seek(offset)
            f.write(data)
        os.utime(replica, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))

    with open(replica, "rb") as f:
        f.seek(offset)
        original = f.read(4096)
    put(bytes(b ^ 0xFF for b in original))
    try:
        rec = migrate(backend, "osaka", Mode.TELEPORT)
    finally:
        put(original)
    assert not list((host_dir / "vms" / VM).glob("*.qcow2"))
    assert rec.result is Result.FAILED
    assert f"differs from the source at byte {offset}" in (rec.error or "")
    assert "re-sync it or migrate without teleport" in (rec.error or "")
    assert f"VM {VM} is running at tokyo" in rec.log[-1].text
    assert_intact_at(backend, "tokyo")


def test_abort_command_stops_a_migration_run_by_another_process(backend) -> None:
    import json

    proc = subprocess.Popen(
        [sys.executable, "-m", "pcteleport.cli", "migrate", VM, "--to", "osaka", "--mode", "stock",
         "--bandwidth", "4", "--json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "migration active" in line:
                break
        out = _cli("abort", VM)
        assert out.returncode == 0, out.stderr
        assert "abort the migration of web-small" in out.stdout
        stdout, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["result"] == "aborted"
    assert_intact_at(backend, "tokyo")
    nothing = _cli("abort", VM)
    assert nothing.returncode == 2
    assert nothing.stderr.strip() == f"pcteleport: no migration of {VM} is running at any site"


def test_tcg_guest_on_qemu_before_9_is_refused_unless_forced(backend, monkeypatch) -> None:
    """The engine guard, with the version libvirt reports faked to Debian 12's QEMU 7.2."""
    from pcteleport.backend import MigrationRequest, ServiceError
    from pcteleport.sites.libvirt.site_runtime import SiteRuntime

    monkeypatch.setattr(SiteRuntime, "emulator_version", lambda self, path: "7.2.22")
    assert all(vm.tcg and vm.qemu_version == "7.2.22" for vm in backend.vms("tokyo"))
    with pytest.raises(ServiceError) as refused:
        backend.migrate(MigrationRequest(VM, "osaka", Mode.STOCK), lambda ev: None)
    msg = str(refused.value)
    assert msg.startswith("QEMU 7.2.22 at tokyo loses dirty pages when it migrates a TCG guest "
                          "(fixed in QEMU 9.0, commit 03bfc2188f)")
    assert msg.endswith("nothing was started (--force migrates anyway)") and "\n" not in msg
    assert where(backend) == {"tokyo": "running"}
    forced = backend.migrate(MigrationRequest(VM, "osaka", Mode.STOCK, force=True),
                             lambda ev: None)
    assert forced.result is Result.OK, forced.error
    assert any("loses dirty pages" in line.text and "(forced)" in line.text
               for line in forced.log)
    monkeypatch.undo()
    assert backend.engine_warning(VM) is None  # the lab's real QEMU (>= 9.0) is sound
    assert migrate(backend, "tokyo", Mode.STOCK).result is Result.OK


def test_ram_compared_across_the_switch_over_in_teleport_and_stock(backend) -> None:
    from pcteleport.backend import MigrationRequest

    warm(backend, "tokyo")
    for mode, to in ((Mode.TELEPORT, "osaka"), (Mode.STOCK, "tokyo")):
        rec = backend.migrate(MigrationRequest(VM, to, mode, compare_ram=True), lambda ev: None)
        assert rec.result is Result.OK, rec.error
        assert rec.ram_check is not None
        assert rec.ram_check.pages == 256 * 256  # web-small: 256 MiB, every page compared
        assert rec.ram_check.differing == 0 and rec.ram_check.first == []
        assert rec.runs_at == to
        if mode is Mode.TELEPORT:
            assert rec.pages.teleported > 2000
        assert any(f"{rec.ram_check.pages} pages compared" in line.text for line in rec.log)
        assert_intact_at(backend, to)


def test_ram_check_finds_a_page_changed_at_the_destination(backend, monkeypatch) -> None:
    """A byte of the paused destination's RAM flipped before the comparison (through its memfd,
    as a lost page would leave it): the run fails naming the page, keeps both versions of it,
    and says truthfully that the VM runs at the destination."""
    from pcteleport.backend import MigrationRequest
    from pcteleport.sites.libvirt import ramcheck
    from pcteleport.sites.libvirt.migration.destination import Destination

    real = Destination.compare_ram
    flipped: dict[str, int] = {}

    def corrupt_then_compare(self, source, evidence_dir) -> str:
        pid = ramcheck.qemu_pid(VM, Path(self.plan.dst.config.lab["host_dir"]).parent
                                / "run-libvirt" / "qemu")
        with open(ramcheck.find_memfd(pid), "r+b") as ram:
            size = ram.seek(0, 2)
            page = size // 4096 - 7  # near the top of RAM: free memory in a small guest
            ram.seek(page * 4096 + 100)
            byte = ram.read(1)
            ram.seek(page * 4096 + 100)
            ram.write(bytes([byte[0] ^ 0x5A]))
        flipped["page"] = page
        return real(self, source, evidence_dir)

    monkeypatch.setattr(Destination, "compare_ram", corrupt_then_compare)
    rec = backend.migrate(MigrationRequest(VM, "osaka", Mode.TELEPORT, compare_ram=True),
                          lambda ev: None)
    monkeypatch.undo()
    assert rec.result is Result.FAILED
    assert rec.ram_check is not None and rec.ram_check.differing == 1
    assert rec.ram_check.first == [hex(flipped["page"] * 4096)]
    assert "1 of 65536 pages differ between tokyo at the switch-over and osaka" in rec.error
    kept = Path(rec.ram_check.evidence)
    src = (kept / f"page-{flipped['page']:08x}.src").read_bytes()
    dst = (kept / f"page-{flipped['page']:08x}.dst").read_bytes()
    assert len(src) == len(dst) == 4096 and src[100] ^ dst[100] == 0x5A and src[:100] == dst[:100]
    assert rec.runs_at == "osaka" and f"VM {VM} runs at osaka" in rec.log[-1].text
    assert migrate(backend, "tokyo", Mode.STOCK).result is Result.OK


def test_a_destination_guest_that_panics_is_reported_running_nowhere(backend) -> None:
    """The guest panics right after the switch-over (an NMI the kernel is told to panic on,
    injected when libvirt reports the resume): the run fails with the console's panic line
    and says the VM runs nowhere — never that it runs at a site."""
    guest_shell(backend, "tokyo", "echo 1 > /proc/sys/kernel/unknown_nmi_panic")
    osaka = backend.sites_rt["osaka"]

    def panic_on_resume(ev) -> None:
        if ev.site == "osaka" and ev.resumed_after_migration:
            threading.Thread(target=lambda: osaka.domain(VM).injectNMI(0), daemon=True).start()

    osaka.events.add(panic_on_resume)
    try:
        rec = migrate(backend, "osaka", Mode.TELEPORT)
    finally:
        osaka.events.remove(panic_on_resume)
    try:
        assert rec.result is Result.FAILED
        assert f"VM {VM} crashed at osaka after the switch-over" in rec.error
        assert "Kernel panic - not syncing: NMI: Not continuing" in rec.error
        assert any("Kernel panic" in line for line in rec.guest_console)
        assert rec.runs_at == "nowhere"
        assert f"VM {VM} runs nowhere: its definition is at osaka" in rec.log[-1].text
        assert where(backend) == {"osaka": "shut off"}
        summary = rec.summary()
        assert summary["guest_crashed"] is True and summary["runs_at"] == "nowhere"
    finally:  # the lab VM again, at home, for the tests after this one
        osaka.domain(VM).create()
        agent = backend.agent(osaka, VM)
        deadline = time.monotonic() + 120
        while True:
            try:
                agent.ping()
                break
            except Exception:
                assert time.monotonic() < deadline, "the restarted VM's agent never answered"
                time.sleep(1)
        assert migrate(backend, "tokyo", Mode.STOCK).result is Result.OK


def test_soak_with_ram_compared_runs_ten_teleports(backend, tmp_path) -> None:
    """`pcteleport bench soak`: ten teleport migrations back and forth, RAM compared at every
    switch-over, memwriter checking its pages in the guest: none lost, none crashed."""
    import json

    out = _cli("bench", "soak", "--vm", VM, "--modes", "teleport", "--runs", "10",
               "--compare-ram", "--out", str(tmp_path), timeout=1500)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| teleport | 10 | 10 | 655,360 | 0 | 0 | 0 | 0 |" in out.stdout
    (result,) = tmp_path.glob("*/soak-web-small-*.json")
    data = json.loads(result.read_text())
    runs = data["runs"]
    assert len(runs) == 10 and all(r["result"] == "ok" for r in runs)
    assert [r["to_site"] for r in runs[:2]] == ["osaka", "tokyo"]
    assert all(r["pages_compared"] == 65536 and r["pages_differing"] == 0 for r in runs)
    assert all(r["pages_teleported"] > 0 for r in runs)
    assert data["summary"][0]["stale_pages"] == 0
    assert where(backend) == {"tokyo": "running"}


def test_a_second_migration_of_a_migrating_vm_is_refused_and_harms_neither(backend) -> None:
    """Another pcteleport process asks to migrate the VM while this one moves it: it is refused
    (the lock on the source host) and the running migration ends as if it had not asked. Before
    the lock, the refused run's clean-up discarded the other run's paused destination."""
    from pcteleport.backend import MigrationRequest

    first: dict[str, MigrationRecord] = {}
    copying = threading.Event()

    def run_first() -> None:  # capped: the second request comes while it copies
        request = MigrationRequest(VM, "osaka", Mode.STOCK, 4 * 2**20, compare_ram=True)
        first["rec"] = backend.migrate(
            request, lambda ev: copying.set() if getattr(ev, "phase", None) == "iterative"
            else None)

    worker = threading.Thread(target=run_first)
    worker.start()
    assert copying.wait(120)
    second = _cli("migrate", VM, "--to", "osaka", "--mode", "stock")
    worker.join(600)
    assert second.returncode == 1
    assert f"VM {VM} is being migrated already (another pcteleport holds" in second.stderr
    assert "discarded" not in second.stdout
    rec = first["rec"]
    assert rec.result is Result.OK, rec.error
    assert rec.ram_check is not None and rec.ram_check.differing == 0
    assert_intact_at(backend, "osaka")
    assert migrate(backend, "tokyo", Mode.STOCK).result is Result.OK
