"""The lab's TLS material for libvirt's TLS migration (console/lab/tls.py): a CA and per-site
server and client certificates made with certtool, where each site's qemu.conf points. No lab
needed: the files are made in a temporary state dir and checked with certtool itself."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from pcteleport.lab import site, tls
from pcteleport.lab.paths import LabPaths
from pcteleport.lab.topology import Site
from tests.conftest import require

SITES = (Site("tokyo", 1, "zz"), Site("osaka", 2, "zz"))


def certtool(*args: str) -> str:
    return subprocess.run(["certtool", *args], capture_output=True, text=True, check=True,
                          timeout=60).stdout


def test_each_site_gets_certificates_the_lab_ca_signed_for_its_addresses(tmp_path):
    require(shutil.which("certtool") is not None, "certtool is missing (gnutls-bin)")
    paths = LabPaths(tmp_path)
    tls.ensure(paths, SITES)
    ca = tls.ca_dir(paths) / "ca-cert.pem"
    for s in SITES:
        d = tls.site_dir(paths, s)
        assert sorted(p.name for p in d.glob("*.pem")) == sorted(
            {*tls.SERVER_FILES, *tls.CLIENT_FILES})
        assert (d / "ca-cert.pem").read_bytes() == ca.read_bytes()
        for role in ("server", "client"):
            assert (d / f"{role}-key.pem").stat().st_mode & 0o077 == 0
            chain = (d / f"{role}-cert.pem").read_text() + ca.read_text()
            (tmp_path / "chain.pem").write_text(chain)
            out = certtool("--verify", "--load-ca-certificate", str(ca), "--infile",
                           str(tmp_path / "chain.pem"))
            assert "Chain verification output: Verified" in out
        info = certtool("-i", "--infile", str(d / "server-cert.pem"))
        # the source QEMU checks the name it connects to: the WAN address
        assert f"IPAddress: {s.wan_addr}" in info and f"DNSname: {s.name}" in info
        assert "TLS WWW Server" in info
        # QEMU refuses a server certificate whose key usage lacks it (ECDSA keys had not)
        assert "Key encipherment" in info and "Digital signature" in info
        assert "TLS WWW Client" in certtool("-i", "--infile", str(d / "client-cert.pem"))


def test_a_second_lab_up_keeps_them_and_a_changed_address_remakes_them(tmp_path):
    require(shutil.which("certtool") is not None, "certtool is missing (gnutls-bin)")
    paths = LabPaths(tmp_path)
    tls.ensure(paths, SITES)
    server = tls.site_dir(paths, SITES[0]) / "server-cert.pem"
    before = server.read_bytes()
    tls.ensure(paths, SITES)
    assert server.read_bytes() == before
    moved = (Site("tokyo", 1, "zy"), SITES[1])
    tls.ensure(paths, moved)
    assert server.read_bytes() != before
    assert f"IPAddress: {moved[0].wan_addr}" in certtool("-i", "--infile", str(server))
    (tls.site_dir(paths, SITES[1]) / "client-key.pem").unlink()
    tls.ensure(paths, moved)
    assert (tls.site_dir(paths, SITES[1]) / "client-key.pem").exists()


def test_each_sites_qemu_conf_names_its_private_cert_dir(tmp_path):
    paths = LabPaths(tmp_path)
    site.prepare_files(paths, SITES[0])
    conf = (paths.site("tokyo").etc_libvirt / "qemu.conf").read_text()
    assert f'default_tls_x509_cert_dir = "{tls.SITE_TLS_DIR}"' in conf
    # inside the site, /etc/libvirt is the site's etc-libvirt: the same files
    assert tls.site_dir(paths, SITES[0]) == paths.site("tokyo").etc_libvirt / Path(
        *tls.SITE_TLS_DIR.parts[3:])
    from pcteleport.sites.libvirt.migration import tls as migration_tls

    assert migration_tls.cert_dir(conf) == str(tls.SITE_TLS_DIR)
