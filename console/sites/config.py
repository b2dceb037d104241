"""The sites config: which sites the console manages and how to reach each one.

A TOML file (`pcteleport lab up` writes one for the lab; see console/sites/backends.py for where
it is looked up). One `[[site]]` table per site:

    [[site]]
    name = "tokyo"
    libvirt_uri = "qemu+ssh://root@tokyo.example/system?keyfile=..."
    replica_dir = "/srv/replicas"        # where disk images and their replicas live on the host
    agent_socket_dir = "/srv/agents"     # <vm>.agent.sock: the guest agent's virtio-serial port
    wan_addr = "192.0.2.10"              # relays listen / connect here for WAN traffic
    wan_iface = "wan0"                   # WAN bytes are counted on this interface
    relay_command = "pcteleport"         # how to run pcteleport on the site host
    ssh = { host = "tokyo.example", port = 22, user = "root", key = "...", known_hosts = "..." }

Optional `[[vm]]` tables describe VMs the console should know more about (their data disk).
"""

from __future__ import annotations

import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from console.errors import PcteleportError


class ConfigError(PcteleportError):
    pass


@dataclass(frozen=True)
class SshLogin:
    host: str
    port: int = 22
    user: str = "root"
    key: str | None = None
    known_hosts: str | None = None


@dataclass(frozen=True)
class SiteConfig:
    name: str
    libvirt_uri: str
    ssh: SshLogin
    replica_dir: str = "/srv/replicas"
    agent_socket_dir: str = "/srv/agents"
    wan_addr: str = ""
    wan_iface: str = ""
    relay_command: tuple[str, ...] = ("pcteleport",)
    lab: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class VmConfig:
    name: str
    data_disk: str = ""
    scenario: str = ""
    home: str = ""
    warm_command: str = ""


@dataclass(frozen=True)
class SitesConfig:
    path: Path
    sites: tuple[SiteConfig, ...]
    vms: tuple[VmConfig, ...] = ()
    wan_profile: str = ""

    def site(self, name: str) -> SiteConfig:
        for s in self.sites:
            if s.name == name:
                return s
        known = ", ".join(s.name for s in self.sites)
        raise ConfigError(f"no site named '{name}' in {self.path} (sites: {known})")

    def vm(self, name: str) -> VmConfig | None:
        return next((v for v in self.vms if v.name == name), None)


def _need(table: dict[str, Any], key: str, where: str) -> Any:
    if key not in table:
        raise ConfigError(f"{where}: '{key}' is missing")
    return table[key]


def load(path: str | Path) -> SitesConfig:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read sites config {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"sites config {path} is not valid TOML: {exc}") from None
    sites = []
    for i, t in enumerate(data.get("site", []), 1):
        where = f"{path}: site #{i}"
        name = str(_need(t, "name", where))
        uri = str(_need(t, "libvirt_uri", where))
        ssh_t = _need(t, "ssh", where)
        ssh = SshLogin(
            host=str(_need(ssh_t, "host", where + " ssh")),
            port=int(ssh_t.get("port", 22)),
            user=str(ssh_t.get("user", "root")),
            key=ssh_t.get("key"),
            known_hosts=ssh_t.get("known_hosts"),
        )
        relay = t.get("relay_command", "pcteleport")
        sites.append(SiteConfig(
            name=name,
            libvirt_uri=uri,
            ssh=ssh,
            replica_dir=str(t.get("replica_dir", "/srv/replicas")),
            agent_socket_dir=str(t.get("agent_socket_dir", "/srv/agents")),
            wan_addr=str(t.get("wan_addr", "")),
            wan_iface=str(t.get("wan_iface", "")),
            relay_command=tuple(relay if isinstance(relay, list) else shlex.split(relay)),
            lab=dict(t.get("lab", {})),
        ))
    if not sites:
        raise ConfigError(f"sites config {path} names no [[site]]")
    names = [s.name for s in sites]
    if len(set(names)) != len(names):
        raise ConfigError(f"sites config {path} names a site twice")
    vms = tuple(
        VmConfig(
            name=str(_need(v, "name", f"{path}: vm #{i}")),
            data_disk=str(v.get("data_disk", "")),
            scenario=str(v.get("scenario", "")),
            home=str(v.get("home", "")),
            warm_command=str(v.get("warm_command", "")),
        )
        for i, v in enumerate(data.get("vm", []), 1)
    )
    lab = data.get("lab", {})
    return SitesConfig(path, tuple(sites), vms, str(lab.get("wan_profile", "")))
