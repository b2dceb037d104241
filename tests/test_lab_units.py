"""Lab pieces that need neither root nor QEMU: profiles, shaping arguments, scenarios, domain
XML, the sites config and data-disk contents."""

from __future__ import annotations

import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pcteleport.errors import PcteleportError
from pcteleport.guestimage import GuestBoot
from pcteleport.lab import config, datafill, domainxml, scenarios, wan
from pcteleport.lab import disks as disks_mod
from pcteleport.lab.paths import LabPaths
from pcteleport.lab.topology import sites
from pcteleport.lab.wanprofiles import PROFILES, profile

BOOT = GuestBoot(Path("/k/vmlinux"), Path("/k/initrd.cpio"), "console=ttyS0",
                 Path("/cache/rootfs.ext4"), "pctroot", "6.1")


def test_profiles_match_the_issue():
    assert {(p.name, p.rate_mbit, p.rtt_ms) for p in PROFILES.values()} == {
        ("default", 100, 50), ("fast", 1000, 10), ("slow", 30, 100)}
    with pytest.raises(PcteleportError, match="use one of"):
        profile("dialup")


def test_tbf_holds_a_whole_jumbo_frame_and_a_bdp_of_queue():
    args = wan.tbf_args(profile("default"))
    burst = int(args[args.index("burst") + 1])
    limit = int(args[args.index("limit") + 1])
    assert args[:3] == ["tbf", "rate", "100mbit"]
    assert burst >= 64000
    assert limit >= 100e6 / 8 * 0.050  # one bandwidth-delay product


def test_every_scenario_loads_and_the_defaults_exist():
    names = scenarios.available()
    assert {"web", "tpcc", "idle", "web-small"} <= set(names)
    for n in names:
        spec = scenarios.load(n)
        assert spec.memory_mib >= 128 and spec.data_size_mib > spec.fill_mib
    assert scenarios.load("web").memory_mib == 1024
    assert scenarios.load("tpcc").fill == "sqlite"


def test_domain_xml_attaches_writable_overlays_on_bases_and_the_agent_channel():
    spec = scenarios.load("web-small")
    root = ET.fromstring(domainxml.domain_xml(spec, BOOT))
    assert root.get("type") == "qemu"
    assert root.findtext("memory") == "256"
    disks = root.findall("devices/disk")
    # each disk a qcow2 overlay (same path at every site) on a raw base of the image cache
    assert [d.find("source").get("file") for d in disks] == [
        "/srv/vms/web-small/vda.qcow2", "/srv/vms/web-small/vdb.qcow2"]
    assert [d.find("driver").get("type") for d in disks] == ["qcow2", "qcow2"]
    bases = [d.find("backingStore/source").get("file") for d in disks]
    assert bases == ["/srv/images/pct-root-rootfs.raw",
                     f"/srv/images/web-small-data-{disks_mod._image_key(spec)}.raw"]
    assert [d.find("backingStore/format").get("type") for d in disks] == ["raw", "raw"]
    assert all(d.find("readonly") is None for d in disks)
    assert [d.findtext("serial") for d in disks] == ["pctroot", "pctdata"]
    names = {c.find("target").get("name"): c.find("source").get("path")
             for c in root.findall("devices/channel")}
    assert names["pcteleport.agent"] == "/srv/agents/web-small.agent.sock"
    assert "pct.hostname=web-small" in root.findtext("os/cmdline")
    assert root.findtext("uuid") == domainxml.vm_uuid("web-small")
    # RAM in a memfd, so a soak can compare it page by page across a migration
    backing = root.find("memoryBacking")
    assert backing.find("source").get("type") == "memfd"
    assert backing.find("access").get("mode") == "shared"
    assert root.findtext("devices/emulator") == "/usr/bin/qemu-system-x86_64"


def test_lab_vms_may_run_another_qemu(monkeypatch):
    monkeypatch.setenv("PCTELEPORT_LAB_EMULATOR", "/opt/qemu72/qemu-system-x86_64")
    root = ET.fromstring(domainxml.domain_xml(scenarios.load("web-small"), BOOT))
    assert root.findtext("devices/emulator") == "/opt/qemu72/qemu-system-x86_64"


def test_an_instance_whose_addresses_another_running_one_has_is_named():
    from pcteleport.lab.topology import _octet, clashing_instance, subnet

    assert _octet("d2") == _octet("m")  # two names, one 10.N/16: it happened
    up = {"pcteleport-m-tokyo", "pcteleport-m-osaka", "pcteleport-t-tokyo", "other-ns"}
    assert clashing_instance(up, "d2") == "m"
    assert clashing_instance(up, "m") is None  # itself
    assert clashing_instance(up, "e") is None
    assert clashing_instance({"pcteleport-tokyo"}, "") is None
    assert subnet("m") == subnet("d2") == f"10.{_octet('m')}.0.0/16"


def test_sites_config_is_valid_toml_with_what_the_console_needs(tmp_path):
    paths = LabPaths(tmp_path)
    text = config.render(paths, "default", [scenarios.load("web-small")])
    cfg = tomllib.loads(text)
    assert [s["name"] for s in cfg["site"]] == [s.name for s in sites()]
    for s, site in zip(cfg["site"], sites(), strict=True):
        assert s["libvirt_uri"].startswith(f"qemu+ssh://root@{site.mgmt_addr}/system?keyfile=")
        assert f"command={paths.ssh_wrapper}" in s["libvirt_uri"]
        assert s["ssh"] == {"host": site.mgmt_addr, "port": 22, "user": "root",
                            "key": str(paths.key), "known_hosts": str(paths.known_hosts)}
        assert s["image_dir"] == "/srv/images"
    assert cfg["vm"][0]["data_disk"] == "/srv/vms/web-small/vdb.qcow2"


def test_data_fill_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        datafill.fill_html(d, 2, seed=7)
    files = sorted(p.relative_to(a) for p in a.rglob("*.html"))
    assert files and sum((a / f).stat().st_size for f in files) >= 2 << 20
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def test_state_dir_under_run_is_refused(monkeypatch):
    from pcteleport.lab import paths

    monkeypatch.setenv("PCTELEPORT_LAB_DIR", "/run/pcteleport-lab")
    with pytest.raises(PcteleportError, match="outside /run"):
        paths.state_dir()


def test_warm_programs_go_onto_the_data_image_and_into_its_key(tmp_path, monkeypatch):
    """The programs a scenario's warm command runs at boot (web's server) are on its data disk
    beside the warm script, and a change to one makes a new image (the key covers their
    bytes); a scenario without programs keeps the key it always had (no 2 GB rebuild)."""
    import dataclasses
    import shutil
    import subprocess

    if shutil.which("debugfs") is None or shutil.which("mkfs.ext4") is None:
        pytest.skip("e2fsprogs is not installed")
    spec = dataclasses.replace(scenarios.load("web-small"), fill="none", fill_mib=0,
                               data_size_mib=16, warm_programs=("svc.py",))
    progs = tmp_path / "guest"
    progs.mkdir()
    (progs / "svc.py").write_text("print(1)\n")
    monkeypatch.setattr(scenarios, "GUEST_PROGRAMS", progs)
    monkeypatch.setattr(disks_mod, "GUEST_CACHE", tmp_path / "cache")
    plain = dataclasses.replace(spec, warm_programs=())
    key = disks_mod._image_key(spec)
    assert key != disks_mod._image_key(plain)
    image = disks_mod.build_data_image(spec)
    shown = subprocess.run(["debugfs", "-R", f"cat /{disks_mod.WARM_PATH.rsplit('/', 1)[0]}"
                            "/svc.py", str(image)], capture_output=True, text=True, check=True)
    assert shown.stdout == "print(1)\n"
    (progs / "svc.py").write_text("print(2)\n")
    assert disks_mod._image_key(spec) != key
    with pytest.raises(PcteleportError, match=r"warm\.programs nothere\.py"):
        toml = tmp_path / "x.toml"
        toml.write_text('[vm]\nname="x"\nmemory_mib=128\n[warm]\nprograms=["nothere.py"]\n')
        monkeypatch.setattr(scenarios, "SCENARIO_DIR", tmp_path)
        scenarios.load("x")
