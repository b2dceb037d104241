"""The sites config: which sites the console manages and how to reach each one.

A TOML file (`pcteleport lab up` writes one for the lab; see console/sites/backends.py for where
it is looked up). One `[[site]]` table per site:

    [[site]]
    name = "tokyo"
    libvirt_uri = "qemu+ssh://root@tokyo.example/system?keyfile=..."
    replica_dir = "/srv/replicas"        # where disk images and their replicas live on the host
    image_dir = "/srv/images"            # the image cache: raw base images of qcow2 overlays,
                                         # the same path and bytes at every site
    agent_socket_dir = "/srv/agents"     # <vm>.agent.sock: the guest agent's virtio-serial port
    wan_addr = "192.0.2.10"              # relays listen / connect here for WAN traffic
    wan_iface = "wan0"                   # WAN bytes are counted on this interface
    relay_command = "pcteleport"         # how to run pcteleport on the site host
    ssh = { host = "tokyo.example", port = 22, user = "root", key = "...", known_hosts = "..." }

Optional `[[vm]]` tables describe VMs the console should know more about (their data disk).

stock, zstd and drop-cache migrate with libvirt's TLS (unless `--insecure`): every site host
needs, in the directory its /etc/libvirt/qemu.conf gives migration TLS (default /etc/pki/qemu),
ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem and client-key.pem, its server
certificate naming its `wan_addr` (README: Encryption on the WAN).
"""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pcteleport.errors import PcteleportError


class ConfigError(PcteleportError):
    pass


_MISSING = object()


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
    image_dir: str = "/srv/images"
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


class _Reader:
    """Typed reads of the parsed TOML whose errors name the file, the line and what to write.

    tomllib keeps no positions, so a key's line is found again in the text: the first
    `key =` (or `key=` inside an inline table) after the header of the table it belongs to,
    else that header's line."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    def line_of(self, header: str, index: int, key: str) -> int | None:
        seen = 0
        start = None
        for n, line in enumerate(self.lines, 1):
            if line.strip() == f"[[{header}]]":
                seen += 1
                if seen == index:
                    start = n
                    continue
            if start is not None:
                if line.strip().startswith("[") and n > start:
                    break
                if re.search(rf"(^|[{{,\s]){re.escape(key)}\s*=", line):
                    return n
        return start  # a key that is not there: the line of its table

    def error(self, header: str, index: int, key: str, what: str) -> ConfigError:
        n = self.line_of(header, index, key)
        where = f"{self.path} line {n}" if n else f"{self.path}: {header} #{index}"
        return ConfigError(f"{where}: {what}")

    def get(self, table: dict[str, Any], header: str, index: int, key: str, kind: type,
            default: Any = _MISSING) -> Any:
        if key not in table:
            if default is _MISSING:
                raise self.error(header, index, key, f"'{key}' is missing")
            return default
        value = table[key]
        ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
        if not ok:
            want = {str: "a string", int: "a whole number", dict: "a table, e.g. "
                    "{ host = \"h\", user = \"root\" }", list: "a list"}[kind]
            raise self.error(header, index, key,
                             f"'{key}' must be {want}, not {type(value).__name__} {value!r}")
        return value


def load(path: str | Path) -> SitesConfig:
    path = Path(path)
    try:
        text = path.read_bytes().decode()
    except OSError as exc:
        raise ConfigError(f"cannot read sites config {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"sites config {path} is not UTF-8 text (byte {exc.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"sites config {path} is not valid TOML: {exc}") from None
    r = _Reader(path, text)
    site_tables = data.get("site", [])
    if not isinstance(site_tables, list) or not all(isinstance(t, dict) for t in site_tables):
        raise ConfigError(f"sites config {path}: 'site' must be [[site]] tables")
    sites = []
    for i, t in enumerate(site_tables, 1):
        name = r.get(t, "site", i, "name", str)
        uri = r.get(t, "site", i, "libvirt_uri", str)
        ssh_t = r.get(t, "site", i, "ssh", dict)
        port = r.get(ssh_t, "site", i, "port", int, 22)
        if not 0 < port < 65536:
            raise r.error("site", i, "port", f"'port' must be 1-65535, not {port}")
        ssh = SshLogin(
            host=r.get(ssh_t, "site", i, "host", str),
            port=port,
            user=r.get(ssh_t, "site", i, "user", str, "root"),
            key=r.get(ssh_t, "site", i, "key", str, None),
            known_hosts=r.get(ssh_t, "site", i, "known_hosts", str, None),
        )
        relay = t.get("relay_command", "pcteleport")
        if isinstance(relay, str):
            try:
                argv = tuple(shlex.split(relay))
            except ValueError as exc:
                raise r.error("site", i, "relay_command", f"'relay_command': {exc}") from None
        elif isinstance(relay, list) and relay and all(isinstance(a, str) for a in relay):
            argv = tuple(relay)
        else:
            raise r.error("site", i, "relay_command", "'relay_command' must be a command "
                          "line or a list of strings, e.g. \"pcteleport\"")
        if not argv:
            raise r.error("site", i, "relay_command", "'relay_command' is empty")
        sites.append(SiteConfig(
            name=name,
            libvirt_uri=uri,
            ssh=ssh,
            replica_dir=r.get(t, "site", i, "replica_dir", str, "/srv/replicas"),
            image_dir=r.get(t, "site", i, "image_dir", str, "/srv/images"),
            agent_socket_dir=r.get(t, "site", i, "agent_socket_dir", str, "/srv/agents"),
            wan_addr=r.get(t, "site", i, "wan_addr", str, ""),
            wan_iface=r.get(t, "site", i, "wan_iface", str, ""),
            relay_command=argv,
            lab=dict(r.get(t, "site", i, "lab", dict, {})),
        ))
    if not sites:
        raise ConfigError(f"sites config {path} names no [[site]]")
    names = [s.name for s in sites]
    if len(set(names)) != len(names):
        raise ConfigError(f"sites config {path} names a site twice")
    vm_tables = data.get("vm", [])
    if not isinstance(vm_tables, list) or not all(isinstance(v, dict) for v in vm_tables):
        raise ConfigError(f"sites config {path}: 'vm' must be [[vm]] tables")
    vms = tuple(
        VmConfig(
            name=r.get(v, "vm", i, "name", str),
            data_disk=r.get(v, "vm", i, "data_disk", str, ""),
            scenario=r.get(v, "vm", i, "scenario", str, ""),
            home=r.get(v, "vm", i, "home", str, ""),
            warm_command=r.get(v, "vm", i, "warm_command", str, ""),
        )
        for i, v in enumerate(vm_tables, 1)
    )
    lab = data.get("lab", {})
    if not isinstance(lab, dict) or not isinstance(lab.get("wan_profile", ""), str):
        raise ConfigError(f"sites config {path}: [lab] wan_profile must be a string")
    return SitesConfig(path, tuple(sites), vms, lab.get("wan_profile", ""))
