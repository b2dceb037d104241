"""The sites config the lab writes for the console (`<state dir>/sites.toml`).

Format (one `[[site]]` per site, one `[[vm]]` per lab VM):

    [lab]
    state_dir = "/var/lib/pcteleport/lab"
    wan_profile = "default"

    [[site]]
    name = "tokyo"
    libvirt_uri = "qemu+ssh://root@10.77.1.2/system?keyfile=…&command=…/bin/lab-ssh&no_tty=1"
    replica_dir = "/srv/replicas"          # on the site host (read-only replicas, older labs)
    image_dir = "/srv/images"              # the image cache: raw bases, same bytes everywhere
    agent_socket_dir = "/srv/agents"       # <vm>.agent.sock / <vm>.shell.sock on the site host
    wan_addr = "10.77.0.1"                 # where relays at this site listen / connect (and
                                           # the name its TLS server certificate carries)
    wan_iface = "wan0"                     # count WAN bytes here
    ssh = { host = "10.77.1.2", port = 22, user = "root", key = "…", known_hosts = "…" }
    lab = { netns = "pcteleport-tokyo", local_libvirt_uri = "qemu:///system?socket=…",
            host_dir = "…/tokyo/srv" }    # the site's /srv as seen from the operator

    [[vm]]
    name = "web"
    scenario = "scenarios/web.toml"
    home = "tokyo"
    memory_mib = 1024
    data_disk = "/srv/vms/web/vdb.qcow2"   # its overlay (same path at every site)
    warm_command = "…"
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Iterable
from pathlib import Path

from pcteleport.lab import disks, vms
from pcteleport.lab.paths import (
    SITE_AGENT_DIR,
    SITE_IMAGE_DIR,
    SITE_REPLICA_DIR,
    SITE_SRV,
    LabPaths,
)
from pcteleport.lab.scenarios import VmSpec
from pcteleport.lab.topology import WAN_IFACE, Site, sites


def libvirt_uri(paths: LabPaths, s: Site) -> str:
    """libvirt over SSH into the site, host key checked against the lab's known_hosts."""
    return (f"qemu+ssh://root@{s.mgmt_addr}/system?keyfile={paths.key}"
            f"&command={paths.ssh_wrapper}&no_tty=1")


def relay_command() -> list[str]:
    """Site hosts are namespaces of this host: they run this very installation's pcteleport
    (PCTELEPORT_LAB_RELAY_COMMAND, a command line, names another: the tests run from a git
    worktree give one that imports the worktree's code)."""
    other = os.environ.get("PCTELEPORT_LAB_RELAY_COMMAND", "").strip()
    return shlex.split(other) if other else [sys.executable, "-m", "pcteleport.cli"]


def _str(v: str) -> str:
    return json.dumps(v)  # a JSON string is a valid TOML basic string


def _inline(d: dict[str, object]) -> str:
    items = ", ".join(f"{k} = {_str(v) if isinstance(v, str) else v}" for k, v in d.items())
    return "{ " + items + " }"


def render(paths: LabPaths, profile: str, specs: Iterable[VmSpec]) -> str:
    out = ["# Written by `pcteleport lab up`; the console reads it. Do not edit: the next",
           "# `lab up` rewrites it.",
           "[lab]", f"state_dir = {_str(str(paths.root))}", f"wan_profile = {_str(profile)}", ""]
    for s in sites():
        ssh = {"host": s.mgmt_addr, "port": 22, "user": "root", "key": str(paths.key),
               "known_hosts": str(paths.known_hosts)}
        lab = {"netns": s.netns, "local_libvirt_uri": vms.local_uri(paths, s),
               "host_dir": str(paths.site(s.name).host_path(SITE_SRV))}
        out += ["[[site]]", f"name = {_str(s.name)}",
                f"libvirt_uri = {_str(libvirt_uri(paths, s))}",
                f"replica_dir = {_str(str(SITE_REPLICA_DIR))}",
                f"image_dir = {_str(str(SITE_IMAGE_DIR))}",
                f"agent_socket_dir = {_str(str(SITE_AGENT_DIR))}",
                f"wan_addr = {_str(s.wan_addr)}", f"wan_iface = {_str(WAN_IFACE)}",
                f"relay_command = {json.dumps(relay_command())}",
                f"ssh = {_inline(ssh)}", f"lab = {_inline(lab)}", ""]
    for spec in specs:
        out += ["[[vm]]", f"name = {_str(spec.name)}", f"scenario = {_str(str(spec.source))}",
                f"home = {_str(vms.HOME_SITE)}", f"memory_mib = {spec.memory_mib}",
                f"vcpus = {spec.vcpus}",
                f"data_disk = {_str(str(disks.overlay_path(spec.name, disks.DATA_TARGET)))}",
                f"warm_command = {_str(spec.warm_command)}", ""]
    return "\n".join(out)


def write(paths: LabPaths, profile: str, specs: Iterable[VmSpec]) -> Path:
    text = render(paths, profile, specs)
    if not paths.sites_toml.exists() or paths.sites_toml.read_text() != text:
        tmp = paths.sites_toml.with_suffix(".tmp")
        tmp.write_text(text)
        os.replace(tmp, paths.sites_toml)
    return paths.sites_toml
