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
from pcteleport.sites.libvirt.migration import modes, tls
from pcteleport.sites.libvirt.migration.journal import Journal
from pcteleport.sites.libvirt.migration.plan import MigrationFailed

XML = "<domain type='qemu'><name>web</name><devices/></domain>"


class Dom:
    def XMLDesc(self, flags: int = 0) -> str:
        return XML


ALL_CERTS = {f"/etc/pki/qemu/{f}" for f in tls.SERVER_FILES + tls.CLIENT_FILES}


class Host:
    """A site host over SSH: its qemu.conf and which files exist; every command kept."""

    def __init__(self, files: set[str] | None = None, qemu_conf: str = "") -> None:
        self.files = ALL_CERTS if files is None else files
        self.qemu_conf = qemu_conf
        self.commands: list[list[str]] = []

    def run(self, argv, input=None, timeout: float = 60):
        self.commands.append(list(argv))
        if argv[:1] == ["cat"]:
            return SimpleNamespace(status=0 if self.qemu_conf else 1, stdout=self.qemu_conf,
                                   stderr="")
        assert argv[:2] == ["sh", "-c"] and argv[3] == "sh"
        missing = [f for f in argv[4:] if f not in self.files]
        return SimpleNamespace(status=0, stdout="".join(f"{f}\n" for f in missing), stderr="")


def plan(mode: Mode, libvirt_version: int, wan_addr: str = "10.77.0.2", **kw):
    conn = SimpleNamespace(getLibVersion=lambda: libvirt_version)
    return SimpleNamespace(
        vm="web", mode=mode, auto_converge=kw.get("auto_converge", False),
        bandwidth_cap=kw.get("bandwidth_cap"), disks=kw.get("disks", []), data_disk="",
        data_serial="", data_target="", insecure=kw.get("insecure", False),
        measure_cpu=False,
        src=SimpleNamespace(name="tokyo", conn=lambda: conn, host=kw.get("src_host", Host())),
        dst=SimpleNamespace(name="osaka", config=SimpleNamespace(wan_addr=wan_addr),
                            host=kw.get("dst_host", Host())))


class Agent:
    def composition(self):
        return SimpleNamespace(cache_clean=0)

    def call(self, *a, **kw):
        return {}


def prepare(p) -> tuple[modes.Prepared, Journal]:
    journal = Journal(MigrationRecord(run_id="r", vm="web", from_site="tokyo", to_site="osaka",
                                      mode=p.mode), lambda ev: None)
    out = modes.Prepared()
    modes.prepare(p, Dom(), journal, lambda site, vm: Agent(), out)  # type: ignore[arg-type]
    return out, journal


def test_stock_goes_straight_over_the_wan():
    out, _ = prepare(plan(Mode.STOCK, 11_003_000, bandwidth_cap=12 * 2**20))
    assert out.params[libvirt.VIR_MIGRATE_PARAM_URI] == "tcp://10.77.0.2"
    assert out.params[libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] == "10.77.0.2"
    assert out.params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] == 12  # MiB/s
    assert out.flags == modes.BASE_FLAGS | libvirt.VIR_MIGRATE_TLS and out.relays is None


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


# --- encryption on the WAN: libvirt's TLS migration (issue 16) ------------------------------

WRITABLE = [SimpleNamespace(writable=True, target="vda")]


@pytest.mark.parametrize("mode", [Mode.STOCK, Mode.ZSTD, Mode.DROP_CACHE])
def test_modes_that_send_straight_to_qemu_ask_libvirt_for_tls(mode, monkeypatch):
    """One flag: libvirt then encrypts the memory stream and hands the same TLS credentials
    to the NBD copy of the disks."""
    monkeypatch.setattr(modes.libvirt_qemu, "qemuMonitorCommand",
                        lambda *a: json.dumps({"return": {}}))
    out, journal = prepare(plan(mode, 11_003_000))
    assert out.flags & libvirt.VIR_MIGRATE_TLS
    text = [line.text for line in journal.record.log]
    assert any(t.endswith("TLS: certificates in /etc/pki/qemu at osaka, /etc/pki/qemu at tokyo")
               for t in text)


@pytest.mark.parametrize("mode", [Mode.STOCK, Mode.ZSTD])
def test_insecure_sends_in_clear_and_looks_for_no_certificate(mode, monkeypatch):
    monkeypatch.setattr(modes.libvirt_qemu, "qemuMonitorCommand",
                        lambda *a: json.dumps({"return": {}}))
    src, dst = Host(files=set()), Host(files=set())
    out, journal = prepare(plan(mode, 11_003_000, insecure=True, src_host=src, dst_host=dst))
    assert not out.flags & libvirt.VIR_MIGRATE_TLS
    assert src.commands == dst.commands == []
    assert any("--insecure" in line.text for line in journal.record.log)


def test_teleport_never_asks_for_tls():
    """The relays must read QEMU's stream to teleport pages: libvirt's TLS would hide it."""
    assert not tls.uses_tls(plan(Mode.TELEPORT, 11_003_000))  # type: ignore[arg-type]
    assert tls.uses_tls(plan(Mode.STOCK, 11_003_000))  # type: ignore[arg-type]
    assert not tls.uses_tls(plan(Mode.STOCK, 11_003_000, insecure=True))  # type: ignore


@pytest.mark.parametrize("where, lacks", [("dst", "server-cert.pem"), ("dst", "ca-cert.pem"),
                                          ("src", "client-key.pem")])
def test_a_site_without_certificates_is_refused_before_anything_starts(where, lacks):
    host = Host(files=ALL_CERTS - {f"/etc/pki/qemu/{lacks}"})
    other = Host()
    kw = {"dst_host": host, "src_host": other} if where == "dst" else {"src_host": host,
                                                                         "dst_host": other}
    site = "osaka" if where == "dst" else "tokyo"
    with pytest.raises(MigrationFailed) as err:
        prepare(plan(Mode.STOCK, 11_003_000, disks=WRITABLE, **kw))
    msg = str(err.value)
    assert msg.startswith(f"{site} has no /etc/pki/qemu/{lacks}: ") and "\n" not in msg
    assert "--insecure" in msg
    # refused before the storage step: no image was made at the destination
    assert not any("qemu-img" in " ".join(c) for c in host.commands + other.commands)


def test_the_cert_dir_is_the_one_qemu_conf_gives_migration():
    assert tls.cert_dir("") == "/etc/pki/qemu"
    assert tls.cert_dir('default_tls_x509_cert_dir = "/etc/x"\n') == "/etc/x"
    conf = ('#migrate_tls_x509_cert_dir = "/nope"\ndefault_tls_x509_cert_dir = "/etc/x"\n'
            'migrate_tls_x509_cert_dir = "/etc/mig"\n')
    assert tls.cert_dir(conf) == "/etc/mig"
    dst = Host(files={f"/etc/mig/{f}" for f in tls.SERVER_FILES}, qemu_conf=conf)
    with pytest.raises(MigrationFailed, match=r"tokyo has no /etc/pki/qemu/ca-cert\.pem"):
        prepare(plan(Mode.STOCK, 11_003_000, dst_host=dst, src_host=Host(files=set())))
    out, _ = prepare(plan(Mode.STOCK, 11_003_000, dst_host=dst))
    assert out.flags & libvirt.VIR_MIGRATE_TLS


@pytest.mark.parametrize("mode, insecure, disks, memory, disk, summary", [
    (Mode.STOCK, False, WRITABLE, "tls", "tls", "tls"),
    (Mode.ZSTD, False, [], "tls", "", "tls"),
    (Mode.TELEPORT, False, WRITABLE, "aes-256-gcm", "aes-256-gcm", "aes-256-gcm"),
    (Mode.TELEPORT, False, [SimpleNamespace(writable=False)], "aes-256-gcm", "",
     "aes-256-gcm"),
    (Mode.STOCK, True, WRITABLE, "none (--insecure)", "none (--insecure)", "none (--insecure)"),
    (Mode.TELEPORT, True, WRITABLE, "none (--insecure)", "none (--insecure)",
     "none (--insecure)"),
])
def test_the_record_names_each_streams_encryption(mode, insecure, disks, memory, disk, summary):
    from pcteleport.sites.libvirt.migration.run import MigrationRun

    p = plan(mode, 11_003_000, insecure=insecure, disks=disks)
    p.vm_uuid, p.bandwidth_cap, p.wan = "u", None, None
    rec = MigrationRun(p, lambda ev: None, lambda s, v: None).record  # type: ignore[arg-type]
    assert (rec.memory_encryption, rec.disk_encryption, rec.wan_encryption) == (
        memory, disk, summary)
    assert rec.summary()["disk_encryption"] == disk
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
