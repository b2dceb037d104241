"""Where the lab keeps its state: keys, known_hosts, per-site directories, pid files, config.

Default `/var/lib/pcteleport/lab` (`lab-<instance>` for a `PCTELEPORT_LAB_INSTANCE`), overridden
by `PCTELEPORT_LAB_DIR`. Not under /run: each site
mounts a private tmpfs on /run, which would hide the state dir from the site's own daemons."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pcteleport.errors import PcteleportError

DEFAULT_STATE_DIR = Path("/var/lib/pcteleport/lab")
GUEST_CACHE = Path(os.environ.get("PCTELEPORT_CACHE", "/var/cache/pcteleport"))
# Inside every site, /srv is the site's own directory: the same path names a different file at
# each site, as on two real hosts (the image cache, VM overlays, agent sockets).
SITE_SRV = Path("/srv")
SITE_REPLICA_DIR = SITE_SRV / "replicas"  # the read-only replicas of labs before issue 13
# The image cache: raw base images, the same path and bytes at every site, each with its
# checksum beside it (<image>.sha256, sha256sum's format).
SITE_IMAGE_DIR = SITE_SRV / "images"
SITE_VM_DIR = SITE_SRV / "vms"
SITE_AGENT_DIR = SITE_SRV / "agents"
# Host directories a lab had to create as mount points (shared by every lab instance).
CREATED_DIRS = DEFAULT_STATE_DIR.parent / "lab-created-dirs"


def state_dir() -> Path:
    from pcteleport.lab.topology import instance

    inst = instance()
    default = DEFAULT_STATE_DIR.with_name(f"lab-{inst}") if inst else DEFAULT_STATE_DIR
    path = Path(os.environ.get("PCTELEPORT_LAB_DIR", str(default))).resolve()
    if path == Path("/run") or Path("/run") in path.parents:
        raise PcteleportError(
            f"lab state dir {path} is under /run, which each site hides: set PCTELEPORT_LAB_DIR "
            "to a path outside /run"
        )
    return path


@dataclass(frozen=True)
class LabPaths:
    root: Path

    @classmethod
    def default(cls) -> LabPaths:
        return cls(state_dir())

    @property
    def key(self) -> Path:
        return self.root / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    @property
    def ssh_wrapper(self) -> Path:
        """`ssh` with the lab's known_hosts enforced; libvirt's `command=` runs it."""
        return self.root / "bin" / "lab-ssh"

    @property
    def sites_toml(self) -> Path:
        return self.root / "sites.toml"

    @property
    def wan_state(self) -> Path:
        return self.root / "wan.json"

    @property
    def delay_pid(self) -> Path:
        return self.root / "wan-delay.pid"

    @property
    def delay_stats(self) -> Path:
        return self.root / "wan-delay.json"

    @property
    def delay_log(self) -> Path:
        return self.root / "wan-delay.log"

    @property
    def lock(self) -> Path:
        """Held while `up`, `down` or `wan` change the lab (two test runs may race)."""
        return self.root / "lock"

    def site(self, name: str) -> SitePaths:
        return SitePaths(self.root / name)


@dataclass(frozen=True)
class SitePaths:
    root: Path

    @property
    def holder_pid(self) -> Path:
        return self.root / "holder.pid"

    @property
    def holder_log(self) -> Path:
        return self.root / "holder.log"

    @property
    def libvirtd_pid(self) -> Path:
        return self.run_libvirt / "libvirtd.pid"

    @property
    def sshd_pid(self) -> Path:
        return self.root / "sshd.pid"

    @property
    def sshd_config(self) -> Path:
        return self.root / "sshd_config"

    @property
    def sshd_log(self) -> Path:
        return self.root / "sshd.log"

    @property
    def host_key(self) -> Path:
        return self.root / "ssh_host_ed25519_key"

    @property
    def etc_libvirt(self) -> Path:
        return self.root / "etc-libvirt"

    @property
    def run_libvirt(self) -> Path:
        return self.root / "run-libvirt"

    @property
    def lib_libvirt(self) -> Path:
        return self.root / "lib-libvirt"

    @property
    def log_libvirt(self) -> Path:
        return self.root / "log-libvirt"

    @property
    def cache_libvirt(self) -> Path:
        return self.root / "cache-libvirt"

    @property
    def passwd(self) -> Path:
        return self.root / "passwd"

    @property
    def group(self) -> Path:
        return self.root / "group"

    @property
    def srv(self) -> Path:
        """The site's /srv as seen from the operator's namespace."""
        return self.root / "srv"

    def host_path(self, site_path: Path) -> Path:
        """A path under the site's /srv, as seen from the operator's namespace."""
        return self.srv / site_path.relative_to(SITE_SRV)

    @property
    def libvirt_sock(self) -> Path:
        return self.run_libvirt / "libvirt-sock"
