"""The lab's TLS material for libvirt's TLS migration (VIR_MIGRATE_TLS), made as libvirt
documents it (https://libvirt.org/kbase/tlscert.html): one CA, and per site host a server and a
client certificate signed by it, with `certtool` (gnutls-bin).

Each site reads them from its private /etc/libvirt (SITE_TLS_DIR): the lab's qemu.conf names that
directory as `default_tls_x509_cert_dir`, which migration (and the NBD disk copy libvirt runs
with it) uses unless `migrate_tls_x509_cert_dir` says otherwise. A real host keeps the same five
files in /etc/pki/qemu, libvirt's default.

Idempotent: a site's files are remade only when one is missing or what the certificate must say
(its names and addresses) changed."""

from __future__ import annotations

import os
import shutil
from pathlib import Path, PurePosixPath

from pcteleport.errors import PcteleportError
from pcteleport.lab import shell
from pcteleport.lab.paths import LabPaths
from pcteleport.lab.topology import Site

# Inside a site: /etc/libvirt is the site's own directory (site.LIBVIRT_DIRS).
SITE_TLS_DIR = PurePosixPath("/etc/libvirt/pki/qemu")
# The files QEMU's tls-creds-x509 reads from the directory: the server side (the destination's
# incoming migration and NBD server) and the client side (the source, which connects).
SERVER_FILES = ("ca-cert.pem", "server-cert.pem", "server-key.pem")
CLIENT_FILES = ("ca-cert.pem", "client-cert.pem", "client-key.pem")
DAYS = 3650


def ca_dir(paths: LabPaths) -> Path:
    return paths.root / "pki"


def site_dir(paths: LabPaths, s: Site) -> Path:
    """The site's SITE_TLS_DIR as seen from the operator's namespace."""
    return paths.site(s.name).etc_libvirt / "pki" / "qemu"


def ensure(paths: LabPaths, sites: tuple[Site, ...]) -> None:
    """The CA, then each site's certificates (before its libvirtd starts: libvirt checks that
    the configured directory exists)."""
    if shutil.which("certtool") is None:
        raise PcteleportError("certtool is missing (gnutls-bin): run scripts/setup.sh as root")
    ca = ca_dir(paths)
    ca.mkdir(mode=0o700, parents=True, exist_ok=True)
    key, cert = ca / "ca-key.pem", ca / "ca-cert.pem"
    fresh_ca = not (key.exists() and cert.exists())
    if fresh_ca:
        _privkey(key)
        tmpl = _template(ca / "ca.info", "cn = pcteleport lab CA", "ca", "cert_signing_key")
        _certtool("--generate-self-signed", "--load-privkey", key, "--template", tmpl,
                  "--outfile", cert)
    for s in sites:
        _ensure_site(paths, s, key, cert, force=fresh_ca)


def _ensure_site(paths: LabPaths, s: Site, ca_key: Path, ca_cert: Path, force: bool) -> None:
    d = site_dir(paths, s)
    d.mkdir(parents=True, exist_ok=True)
    # The source QEMU checks the destination's certificate against the address it connects to
    # (the WAN address, for memory and NBD alike); the host name is there for operators who
    # migrate by name.
    names = [f"dns_name = {s.name}", f"ip_address = {s.wan_addr}", f"ip_address = {s.mgmt_addr}"]
    server = ["organization = pcteleport lab", f"cn = {s.name}", *names, "tls_www_server",
              "encryption_key", "signing_key"]
    client = ["organization = pcteleport lab", f"cn = {s.name}", "tls_www_client",
              "encryption_key", "signing_key"]
    want = "\n".join(["key rsa-3072", *server, "--", *client]) + "\n"  # a change remakes
    stamp = d / ".pcteleport-lab"
    have = all((d / f).exists() for f in {*SERVER_FILES, *CLIENT_FILES})
    if have and not force and stamp.exists() and stamp.read_text() == want:
        return
    shutil.copyfile(ca_cert, d / "ca-cert.pem")
    for role, lines in (("server", server), ("client", client)):
        key = d / f"{role}-key.pem"
        _privkey(key)
        tmpl = _template(d / f".{role}.info", *lines)
        _certtool("--generate-certificate", "--load-privkey", key, "--load-ca-certificate",
                  ca_cert, "--load-ca-privkey", ca_key, "--template", tmpl, "--outfile",
                  d / f"{role}-cert.pem")
        tmpl.unlink()
    stamp.write_text(want)


def _privkey(path: Path) -> None:
    # RSA 3072, as libvirt documents: QEMU wants key encipherment in a server certificate's
    # key usage, which certtool gives RSA keys only (an ECDSA one fails at migration time)
    path.unlink(missing_ok=True)
    _certtool("--generate-privkey", "--sec-param=high", "--outfile", path)
    os.chmod(path, 0o600)


def _template(path: Path, *lines: str) -> Path:
    path.write_text("\n".join([*lines, f"expiration_days = {DAYS}"]) + "\n")
    return path


def _certtool(*args: object) -> None:
    shell.run(["certtool", *(str(a) for a in args)], timeout=60)
