"""Sites config parsing and domain XML reading: the parts of the migration service that need
no site (the service itself is tested against the lab in test_migrations.py)."""

from __future__ import annotations

import pytest

from pcteleport.errors import PcteleportError
from pcteleport.sites import config
from pcteleport.sites.libvirt.site_runtime import domain_disks

GOOD = """
[lab]
wan_profile = "default"

[[site]]
name = "tokyo"
libvirt_uri = "qemu+ssh://root@10.0.0.1/system"
wan_addr = "10.77.0.1"
wan_iface = "wan0"
relay_command = "/opt/venv/bin/pcteleport --quiet"
ssh = { host = "10.0.0.1", port = 2222, key = "/k" }

[[site]]
name = "osaka"
libvirt_uri = "qemu:///system"
relay_command = ["/usr/bin/python3", "-m", "pcteleport.cli"]
ssh = { host = "10.0.0.2" }

[[vm]]
name = "web"
data_disk = "/srv/replicas/web-data.raw"
"""


def test_sites_config_reads_sites_and_vms(tmp_path):
    p = tmp_path / "sites.toml"
    p.write_text(GOOD)
    cfg = config.load(p)
    assert [s.name for s in cfg.sites] == ["tokyo", "osaka"]
    tokyo = cfg.site("tokyo")
    assert tokyo.ssh.port == 2222 and tokyo.ssh.user == "root" and tokyo.ssh.key == "/k"
    assert tokyo.relay_command == ("/opt/venv/bin/pcteleport", "--quiet")
    assert cfg.site("osaka").relay_command == ("/usr/bin/python3", "-m", "pcteleport.cli")
    assert cfg.site("osaka").replica_dir == "/srv/replicas"
    assert cfg.vm("web").data_disk == "/srv/replicas/web-data.raw"
    assert cfg.vm("nope") is None
    assert cfg.wan_profile == "default"
    with pytest.raises(PcteleportError, match=r"no site named 'kyoto'.*tokyo, osaka"):
        cfg.site("kyoto")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[site]]\nname = 'a'\n", "'libvirt_uri' is missing"),
        ("[[site]]\nname = 'a'\nlibvirt_uri = 'x'\n", "'ssh' is missing"),
        ("nothing = 1\n", "names no"),
        ("[[site\n", "not valid TOML"),
        (GOOD + "\n[[site]]\nname='tokyo'\nlibvirt_uri='x'\nssh={host='h'}\n", "twice"),
    ],
)
def test_bad_sites_config_says_what_is_wrong(tmp_path, text, message):
    p = tmp_path / "sites.toml"
    p.write_text(text)
    with pytest.raises(PcteleportError, match=message):
        config.load(p)


def test_missing_sites_config_is_one_line(tmp_path):
    with pytest.raises(PcteleportError, match="cannot read sites config"):
        config.load(tmp_path / "absent.toml")


def test_domain_disks_reads_paths_serials_and_readonly():
    xml = """<domain><devices>
      <disk type='file' device='disk'><source file='/srv/vms/web-root.qcow2'/>
        <target dev='vda'/><serial>pctroot</serial></disk>
      <disk type='file' device='disk'><source file='/srv/replicas/web-data.raw'/>
        <target dev='vdb'/><serial>data</serial><readonly/></disk>
      <disk type='file' device='cdrom'><source file='/x.iso'/><target dev='hdc'/></disk>
    </devices></domain>"""
    disks = domain_disks(xml)
    assert [(d.target, d.path, d.serial, d.readonly) for d in disks] == [
        ("vda", "/srv/vms/web-root.qcow2", "pctroot", False),
        ("vdb", "/srv/replicas/web-data.raw", "data", True),
    ]


SITE = "[[site]]\nname = 'a'\nlibvirt_uri = 'qemu:///system'\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (SITE + "ssh = 'root@host'\n",
         r"sites.toml line 4: 'ssh' must be a table, e.g. \{ host"),
        (SITE + "ssh = { host = 'h', port = 'abc' }\n",
         r"sites.toml line 4: 'port' must be a whole number, not str 'abc'"),
        (SITE + "ssh = { host = 'h', port = 70000 }\n", r"line 4: 'port' must be 1-65535"),
        (SITE + "ssh = { host = 'h', port = true }\n", r"'port' must be a whole number"),
        ("site = 5\n", r"'site' must be \[\[site\]\] tables"),
        ("[[site]]\nname = 5\n", r"sites.toml line 2: 'name' must be a string, not int 5"),
        (SITE + "ssh = { host = 'h' }\nrelay_command = 5\n",
         r"line 5: 'relay_command' must be a command line or a list of strings"),
        (SITE + "ssh = { host = 'h' }\nrelay_command = \"pcteleport 'oops\"\n",
         r"line 5: 'relay_command': No closing quotation"),
        (SITE + "ssh = { host = 'h' }\nrelay_command = []\n", r"'relay_command' must be"),
        (SITE + "ssh = { host = 'h' }\n[[vm]]\ndata_disk = '/x'\n",
         r"sites.toml line 5: 'name' is missing"),
    ],
)
def test_a_wrong_type_in_sites_config_names_the_line(tmp_path, text, message):
    p = tmp_path / "sites.toml"
    p.write_text(text)
    with pytest.raises(PcteleportError, match=message) as err:
        config.load(p)
    assert "\n" not in str(err.value)


def test_a_sites_config_that_is_not_utf8_is_one_line(tmp_path):
    p = tmp_path / "sites.toml"
    p.write_bytes(b"[[site]]\nname = '\xff'\n")
    with pytest.raises(PcteleportError, match=r"is not UTF-8 text \(byte 17\)"):
        config.load(p)
