"""One prepare step per mode (sites/libvirt/migration/modes.py): the migrate3 parameters and
flags each mode asks libvirt for, on libvirt 11.3 (multifd zstd as a typed parameter) and on
Debian 12's 9.0 (QEMU's parameter set by hand). The real engine runs these paths in
tests/test_migrations.py; here both libvirt versions are covered on one machine."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from types import SimpleNamespace

import libvirt
import pytest

from pcteleport.records import MigrationRecord, Mode
from pcteleport.sites.libvirt.migration import modes
from pcteleport.sites.libvirt.migration.journal import Journal
from pcteleport.sites.libvirt.migration.plan import MigrationFailed

XML = "<domain type='qemu'><name>web</name><devices/></domain>"


class Dom:
    def XMLDesc(self, flags: int = 0) -> str:
        return XML


def plan(mode: Mode, libvirt_version: int, wan_addr: str = "10.77.0.2", **kw):
    conn = SimpleNamespace(getLibVersion=lambda: libvirt_version)
    return SimpleNamespace(
        vm="web", mode=mode, auto_converge=kw.get("auto_converge", False),
        bandwidth_cap=kw.get("bandwidth_cap"), disks=kw.get("disks", []), data_disk="",
        data_serial="", data_target="",
        src=SimpleNamespace(name="tokyo", conn=lambda: conn),
        dst=SimpleNamespace(name="osaka", config=SimpleNamespace(wan_addr=wan_addr)))


def prepare(p) -> tuple[modes.Prepared, Journal]:
    journal = Journal(MigrationRecord(run_id="r", vm="web", from_site="tokyo", to_site="osaka",
                                      mode=p.mode), lambda ev: None)
    out = modes.Prepared()
    modes.prepare(p, Dom(), journal, lambda site, vm: None, out)  # type: ignore[arg-type]
    return out, journal


def test_stock_goes_straight_over_the_wan():
    out, _ = prepare(plan(Mode.STOCK, 11_003_000, bandwidth_cap=12 * 2**20))
    assert out.params[libvirt.VIR_MIGRATE_PARAM_URI] == "tcp://10.77.0.2"
    assert out.params[libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] == "10.77.0.2"
    assert out.params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] == 12  # MiB/s
    assert out.flags == modes.BASE_FLAGS and out.relays is None


def test_zstd_on_libvirt_11_uses_its_typed_parameter(monkeypatch):
    monkeypatch.setattr(modes.libvirt_qemu, "qemuMonitorCommand",
                        lambda *a: pytest.fail("no QMP side door where libvirt has the knob"))
    out, _ = prepare(plan(Mode.ZSTD, 11_003_000, auto_converge=True))
    assert out.params[libvirt.VIR_MIGRATE_PARAM_COMPRESSION] == "zstd"
    assert out.flags & libvirt.VIR_MIGRATE_PARALLEL
    assert out.flags & libvirt.VIR_MIGRATE_AUTO_CONVERGE
    assert libvirt.VIR_MIGRATE_PARAM_DEST_XML not in out.params


def test_zstd_on_libvirt_9_0_sets_qemus_parameter_on_both_ends(monkeypatch):
    sent = []

    def qmp(dom, cmd, flags):
        sent.append(json.loads(cmd))
        return json.dumps({"return": {}})

    monkeypatch.setattr(modes.libvirt_qemu, "qemuMonitorCommand", qmp)
    out, journal = prepare(plan(Mode.ZSTD, 9_000_000))
    assert sent == [{"execute": "migrate-set-parameters",
                     "arguments": {"multifd-compression": "zstd"}}]
    assert libvirt.VIR_MIGRATE_PARAM_COMPRESSION not in out.params
    dest = ET.fromstring(out.params[libvirt.VIR_MIGRATE_PARAM_DEST_XML])
    args = [a.get("value") for a in dest.iter(f"{{{modes.QEMU_NS}}}arg")]
    assert args == ["-global", "migration.multifd-compression=zstd"]
    assert any("cannot ask for multifd zstd" in line.text for line in journal.record.log)


def test_zstd_refused_by_qemu_is_one_clear_line(monkeypatch):
    monkeypatch.setattr(modes.libvirt_qemu, "qemuMonitorCommand",
                        lambda *a: json.dumps({"error": {"desc": "no zstd in this build"}}))
    with pytest.raises(MigrationFailed, match="QEMU refused multifd zstd: no zstd in this build"):
        prepare(plan(Mode.ZSTD, 9_000_000))


def test_a_site_without_a_wan_address_is_named():
    with pytest.raises(MigrationFailed, match="site osaka has no wan_addr"):
        prepare(plan(Mode.STOCK, 11_003_000, wan_addr=""))


def test_teleport_without_a_data_disk_says_what_to_do():
    p = plan(Mode.TELEPORT, 11_003_000)
    p.data_disk = ""
    with pytest.raises(MigrationFailed, match="teleport needs one \\(migrate with stock"):
        prepare(p)


@pytest.mark.parametrize("migrated, told, reset", [(False, True, True), (True, True, False),
                                                    (False, False, False)])
def test_a_failed_run_gives_qemu_back_its_own_switch_over_estimate(monkeypatch, migrated, told,
                                                                   reset):
    """The source QEMU outlives a failed run: its next migration, in any mode, must not size
    its switch-over by the rate teleport told it."""
    from pcteleport.sites.libvirt.migration import switchover
    from pcteleport.sites.libvirt.migration.plan import AbortSignal
    from pcteleport.sites.libvirt.migration.transfer import Transfer

    calls = []
    monkeypatch.setattr(switchover, "set_rate", lambda dom, rate: calls.append(rate))
    p = plan(Mode.TELEPORT, 11_003_000)
    _, journal = prepare(plan(Mode.STOCK, 11_003_000))
    t = Transfer(p, journal, modes.Prepared(), AbortSignal())  # type: ignore[arg-type]
    t.migrated, t.told_qemu = migrated, told
    t.forget_switchover(Dom())
    assert calls == ([0] if reset else [])


def test_the_destination_qemus_log_tells_a_crash_from_libvirts_clean_up():
    """libvirt's log of the incoming QEMU: killed under it (reason=crashed), or stopped by
    libvirt itself after the source's job failed (reason=failed); only a stop since the run
    began counts."""
    from datetime import UTC, datetime

    from pcteleport.sites.libvirt.migration.destination import qemu_crashed_since

    start = datetime(2026, 11, 30, 14, 26, 50, tzinfo=UTC).timestamp()
    killed = ("2026-11-30 14:26:53.704+0000: Domain id=1 is tainted: host-cpu\n"
              "2026-11-30 14:26:58.192+0000: shutting down, reason=crashed\n")
    cleaned_up = ("2026-11-30T14:27:13.806071Z qemu-system-x86_64: check_section_footer: Read "
                  "section footer failed: -5\n"
                  "2026-11-30 14:27:13.932+0000: shutting down, reason=failed\n"
                  "2026-11-30T14:27:13.932955Z qemu-system-x86_64: terminating on signal 15 "
                  "from pid 20944 (/usr/sbin/libvirtd)\n")
    assert qemu_crashed_since(killed, start)
    assert not qemu_crashed_since(killed + cleaned_up, start)  # the last stop counts
    assert not qemu_crashed_since(killed, start + 3600)  # an earlier run's crash
    assert not qemu_crashed_since("", start)
