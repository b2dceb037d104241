"""Guest memory and disks on the real lab's WAN (issue 16): a guest process holds 4,096 pages
that each begin with a random marker, and a file on the VM's writable data disk holds blocks that
begin with another; tcpdump records the source site's WAN interface during one migration of
each mode, and the capture is searched for both markers.

stock, zstd and drop-cache use libvirt's TLS migration: neither marker may appear. With
`--insecure` stock sends both in clear: they must appear (the capture does see the traffic).
teleport sends memory through its relays and the NBD disk copy through its tunnel, both in
AES-256-GCM frames: neither marker may appear. A destination without its certificate is refused
before anything starts, and the VM keeps running at the source.

A lab instance of its own ("tl"), one small web VM, the fast WAN profile."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pcteleport.records import MigrationRecord, Mode, Result
from tests.conftest import lab_backend, require

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.slow]

INSTANCE = "tl"
VM = "web-small"
ROOT = Path(__file__).resolve().parent.parent
PAGES = 4096
# Held in guest RAM only: the marker comes in on argv, never in a file the disks could carry.
HOLDER = r"""
import os, sys, time
marker, pages = sys.argv[1].encode(), int(sys.argv[2])
buf = bytearray(pages * 4096)
for i in range(pages):
    buf[i * 4096:(i + 1) * 4096] = marker + os.urandom(4096 - len(marker))
open("/tmp/holder-ready", "w").write("ready")
while True:
    time.sleep(1)
    buf[0] ^= 0  # touched now and then: the pages stay this process's
"""
DISK_FILE = "/data/tls-disk-marker"
WRITE_DISK = r"""
import os, sys
marker = sys.argv[1].encode()
with open(sys.argv[2], "wb") as f:
    for i in range(256):
        f.write(marker + os.urandom(4096 - len(marker)))
    f.flush()
    os.fsync(f.fileno())
"""


def _cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pcteleport.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, stdin=subprocess.DEVNULL)


class Lab:
    def __init__(self, backend, memory_marker: bytes, disk_marker: bytes) -> None:
        self.backend, self.memory_marker, self.disk_marker = backend, memory_marker, disk_marker

    def host_dir(self, site: str) -> Path:
        return Path(self.backend.sites_rt[site].config.lab["host_dir"])

    def shell(self, site: str, script: str, timeout: float = 300) -> str:
        from pcteleport.lab import guestshell

        status, out = guestshell.run(self.host_dir(site) / "agents" / f"{VM}.shell.sock",
                                     script, timeout=timeout)
        assert status == 0, out
        return out

    def where(self) -> str:
        running = [site for site in ("tokyo", "osaka") for vm in self.backend.vms(site)
                   if vm.name == VM and str(vm.state) == "running"]
        assert len(running) == 1, running
        return running[0]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    require(os.geteuid() == 0, "the lab needs root")
    for tool in ("qemu-system-x86_64", "certtool", "tcpdump"):
        require(shutil.which(tool) is not None, f"{tool} is not installed (scripts/setup.sh)")
    with lab_backend(INSTANCE, VM, tmp_path_factory.mktemp("records")) as b:
        # random per run: nothing else on the WAN can hold them by accident
        lab = Lab(b, f"PCTMEM-{secrets.token_hex(12)}".encode(),
                  f"PCTDSK-{secrets.token_hex(12)}".encode())
        site = lab.where()
        lab.shell(site, "\n".join([
            # the programs in /tmp (tmpfs: guest RAM, never a disk), the markers on argv
            f"cat > /tmp/write-disk.py <<'EOF'\n{WRITE_DISK}\nEOF",
            f"cat > /tmp/holder.py <<'EOF'\n{HOLDER}\nEOF",
            f"python3 /tmp/write-disk.py {lab.disk_marker.decode()} {DISK_FILE}",
            "sync; echo 3 > /proc/sys/vm/drop_caches",
            "rm -f /tmp/holder-ready",
            f"python3 /tmp/holder.py {lab.memory_marker.decode()} {PAGES} "
            "</dev/null >/dev/null 2>&1 &",
            "for i in $(seq 600); do [ -e /tmp/holder-ready ] && break; sleep 0.5; done",
            "cat /tmp/holder-ready"]))
        yield lab


@contextlib.contextmanager
def capture(site: str, pcap: Path) -> Iterator[dict[str, int]]:
    """tcpdump on the site's WAN interface, whole packets, while the block runs."""
    from pcteleport.lab.topology import WAN_IFACE
    from pcteleport.lab.topology import site as lab_site

    stats: dict[str, int] = {}
    err = pcap.with_suffix(".err")
    with err.open("w") as errf:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", lab_site(site).netns, "tcpdump", "-i", WAN_IFACE, "-s", "0",
             "-Z", "root", "-B", "65536", "-U", "-w", str(pcap)],
            stdout=subprocess.DEVNULL, stderr=errf)
    try:
        for _ in range(600):  # tcpdump says so once it captures (slow on a loaded machine)
            if "listening on" in err.read_text() or proc.poll() is not None:
                break
            time.sleep(0.1)
        assert proc.poll() is None, err.read_text()
        yield stats
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(120)
    text = err.read_text()
    for key in ("captured", "dropped by kernel"):
        m = re.search(rf"(\d+) packets? {key}", text)
        stats[key] = int(m.group(1)) if m else -1


def migrate_captured(lab: Lab, mode: Mode, insecure: bool, tmp_path: Path
                     ) -> tuple[MigrationRecord, bytes, dict[str, int]]:
    from pcteleport.backend import MigrationRequest

    src = lab.where()
    to = "osaka" if src == "tokyo" else "tokyo"
    pcap = tmp_path / f"{mode}-{'clear' if insecure else 'secure'}.pcap"
    with capture(src, pcap) as stats:
        rec = lab.backend.migrate(MigrationRequest(VM, to, mode, insecure=insecure),
                                  lambda ev: None)
    assert rec.result is Result.OK, rec.error
    data = pcap.read_bytes()
    print(f"\n{mode}{' --insecure' if insecure else ''}: WAN {rec.wan_bytes:,} B (disks "
          f"{rec.disk_wan_bytes:,}), captured {len(data):,} B in {stats['captured']} packets "
          f"({stats['dropped by kernel']} dropped); memory marker x"
          f"{data.count(lab.memory_marker)}, disk marker x{data.count(lab.disk_marker)}; "
          f"encryption: memory {rec.memory_encryption}, disks {rec.disk_encryption}")
    # the capture saw the migration: at least most of what the WAN counter counted
    assert len(data) >= 0.5 * rec.wan_bytes, (len(data), rec.wan_bytes, stats)
    pcap.unlink()  # hundreds of MB
    return rec, data, stats


def test_stock_in_clear_shows_guest_memory_and_disks_on_the_wan(lab, tmp_path) -> None:
    """The control: what the capture finds when nothing encrypts."""
    rec, data, _ = migrate_captured(lab, Mode.STOCK, True, tmp_path)
    assert (rec.memory_encryption, rec.disk_encryption) == ("none (--insecure)",) * 2
    assert data.count(lab.memory_marker) >= PAGES // 2
    assert data.count(lab.disk_marker) >= 1


def test_lab_up_restarts_a_libvirtd_that_read_a_qemu_conf_without_tls(lab) -> None:
    """A lab brought up before TLS: its libvirtd knows no cert dir. `lab up` rewrites qemu.conf
    and restarts that libvirtd; the VM keeps running (the TLS migrations below use it)."""
    from pcteleport.lab import shell, site
    from pcteleport.lab.paths import LabPaths
    from pcteleport.lab.topology import site as lab_site

    paths, where = LabPaths.default(), lab.where()
    s = lab_site(where)
    conf = paths.site(where).etc_libvirt / "qemu.conf"
    conf.write_text("".join(ln for ln in conf.read_text().splitlines(keepends=True)
                            if "tls" not in ln))
    site.stop_libvirtd(paths, s)
    old = site.ensure_libvirtd(paths, s, site.require_holder(paths, s))
    up = _cli("lab", "up", "--vms", VM, "--wan", "fast")
    assert up.returncode == 0, up.stderr
    new = shell.read_pid(paths.site(where).libvirtd_pid)
    assert new is not None and new != old
    assert "default_tls_x509_cert_dir" in conf.read_text()
    assert lab.where() == where  # (the backend reconnects to the new libvirtd)


@pytest.mark.parametrize("mode", [Mode.STOCK, Mode.ZSTD, Mode.DROP_CACHE])
def test_libvirt_tls_hides_memory_and_disks(lab, tmp_path, mode) -> None:
    rec, data, _ = migrate_captured(lab, mode, False, tmp_path)
    assert (rec.memory_encryption, rec.disk_encryption, rec.wan_encryption) == ("tls",) * 3
    assert any("TLS: certificates in /etc/libvirt/pki/qemu" in ln.text for ln in rec.log)
    assert data.count(lab.memory_marker) == 0
    assert data.count(lab.disk_marker) == 0


def test_teleport_hides_memory_and_disks_in_its_own_frames(lab, tmp_path) -> None:
    """Memory through the relays, the NBD disk copy through the tunnel: AES-256-GCM both."""
    rec, data, _ = migrate_captured(lab, Mode.TELEPORT, False, tmp_path)
    assert (rec.memory_encryption, rec.disk_encryption) == ("aes-256-gcm",) * 2
    assert any("the disks' NBD copy goes through the encrypted tunnel" in ln.text
               for ln in rec.log)
    assert data.count(lab.memory_marker) == 0
    assert data.count(lab.disk_marker) == 0


def test_a_destination_without_its_certificate_is_refused_before_the_start(lab) -> None:
    from pcteleport.lab import tls
    from pcteleport.lab.paths import LabPaths
    from pcteleport.lab.topology import site as lab_site

    src = lab.where()
    to = "osaka" if src == "tokyo" else "tokyo"
    cert = tls.site_dir(LabPaths.default(), lab_site(to)) / "server-cert.pem"
    aside = cert.with_suffix(".aside")
    cert.rename(aside)
    try:
        out = _cli("migrate", VM, "--to", to, "--mode", "stock", "--json")
    finally:
        aside.rename(cert)
    assert out.returncode != 0
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["result"] == "failed" and summary["runs_at"] == src
    errors = [ln for ln in out.stderr.splitlines() if "has no " in ln]
    assert errors and f"{to} has no {tls.SITE_TLS_DIR}/server-cert.pem" in errors[-1]
    assert lab.where() == src
    assert not list((lab.host_dir(to) / "vms" / VM).glob("*.qcow2"))
