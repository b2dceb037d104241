"""Encryption on the WAN (issue 16): what protects each stream of a run, and libvirt's TLS
migration for the modes whose memory stream QEMU sends straight to the destination.

stock, zstd and drop-cache ask libvirt for VIR_MIGRATE_TLS: QEMU then speaks TLS on the
migration connection (multifd channels too) and libvirt gives the same TLS credentials to the
NBD server at the destination and the NBD client at the source, so the disks' storage copy is
encrypted as well (libvirt's qemu_migration.c: qemuMigrationSrcRun takes one TLS alias from
qemuMigrationParamsEnableTLS for both; NBD over TLS came with libvirt 4.4 in 2018, so 9.0 and
11.3 both do it; on the lab's 11.3 a capture of the WAN shows it: tests/test_wan_tls_lab.py).
Each host needs the CA's certificate and its own server and client
certificates in the directory its qemu.conf names; a missing file is found before anything
starts, and named.

teleport cannot use it: with VIR_MIGRATE_TLS the memory stream would reach our send relay
encrypted, and the relay must read it to teleport pages (libvirt has no TLS for the disks
alone). Its memory crosses the WAN in the relays' AES-256-GCM frames, and its NBD disk copy
through our tunnel in the same frames (teleport/tunnel.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pcteleport.records import Mode
from pcteleport.sites.libvirt.migration.plan import MigrationFailed, Plan
from pcteleport.sites.libvirt.site_runtime import SiteRuntime

QEMU_CONF = "/etc/libvirt/qemu.conf"
DEFAULT_CERT_DIR = "/etc/pki/qemu"  # libvirt's default_tls_x509_cert_dir
# What QEMU's tls-creds-x509 reads: the destination listens (memory, NBD), the source connects.
SERVER_FILES = ("ca-cert.pem", "server-cert.pem", "server-key.pem")
CLIENT_FILES = ("ca-cert.pem", "client-cert.pem", "client-key.pem")

TLS = "tls"
AES_GCM = "aes-256-gcm"
INSECURE = "none (--insecure)"


def uses_tls(plan: Plan) -> bool:
    return plan.mode != Mode.TELEPORT and not plan.insecure


@dataclass(frozen=True)
class WanEncryption:
    """How each stream of a run crosses the WAN."""

    memory: str
    disks: str  # "" when no disk moves

    @property
    def summary(self) -> str:
        """One word when every stream is protected alike, else what each one has."""
        if not self.disks or self.disks == self.memory:
            return self.memory
        return f"partial: memory {self.memory}, disks {self.disks}"


def encryption(plan: Plan) -> WanEncryption:
    moves = any(d.writable for d in plan.disks)
    if plan.insecure:
        return WanEncryption(INSECURE, INSECURE if moves else "")
    if plan.mode == Mode.TELEPORT:  # the disks through its tunnel (modes.py)
        return WanEncryption(AES_GCM, AES_GCM if moves else "")
    return WanEncryption(TLS, TLS if moves else "")


def cert_dir(qemu_conf: str) -> str:
    """The directory libvirt gives QEMU for migration TLS, as qemu.conf says."""
    found: dict[str, str] = {}
    for line in qemu_conf.splitlines():
        m = re.match(r'\s*(migrate|default)_tls_x509_cert_dir\s*=\s*"([^"]*)"', line)
        if m:
            found[m.group(1)] = m.group(2)
    return found.get("migrate") or found.get("default") or DEFAULT_CERT_DIR


def missing_files(site: SiteRuntime, files: tuple[str, ...]) -> tuple[str, list[str]]:
    """The site's migration cert dir (from its qemu.conf) and which of `files` it lacks."""
    conf = site.host.run(["cat", QEMU_CONF], timeout=30)
    d = cert_dir(conf.stdout if conf.status == 0 else "")
    paths = [f"{d}/{f}" for f in files]
    res = site.host.run(["sh", "-c", 'for f in "$@"; do [ -r "$f" ] || echo "$f"; done', "sh",
                         *paths], timeout=30)
    if res.status != 0:
        raise MigrationFailed(f"could not look for the TLS certificates at {site.name}: "
                              f"{res.stderr.strip() or res.status}")
    return d, [ln for ln in res.stdout.splitlines() if ln.strip()]


def check_certificates(plan: Plan) -> str:
    """Both ends hold what TLS migration needs, or one line naming the first missing file.
    Returns a log line saying where the certificates are."""
    dirs = []
    for site, files, role in ((plan.dst, SERVER_FILES, "destination"),
                              (plan.src, CLIENT_FILES, "source")):
        d, missing = missing_files(site, files)
        if missing:
            raise MigrationFailed(
                f"{site.name} has no {missing[0]}: the {role} of a TLS migration needs the "
                f"CA's and its own certificates in {d} (README: Encryption on the WAN); "
                "nothing was started (--insecure migrates in clear)")
        dirs.append(f"{d} at {site.name}")
    return f"TLS: certificates in {', '.join(dirs)}"
