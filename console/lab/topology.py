"""Names and addresses of the lab: which network namespace, interface and address each site gets.

Every address lives inside a namespace the lab creates (10.<N>.0.0/16, N = 77 for the default
lab); the operator's side of each management link is the only one in the root namespace.

`PCTELEPORT_LAB_INSTANCE` (a short lowercase name) runs a second, separate lab beside the
default one — its own namespaces, links, addresses and state dir — so that a test run does not
tear down the lab an operator is using."""

from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass

from pcteleport.errors import PcteleportError

SITE_NAMES: tuple[str, ...] = ("tokyo", "osaka")
WAN_IFACE = "wan0"
MGMT_IFACE = "mgmt0"
WAN_MTU = 64000  # large frames keep the userspace delay line at a few hundred packets a second
DEFAULT_OCTET = 77


def instance() -> str:
    name = os.environ.get("PCTELEPORT_LAB_INSTANCE", "")
    if name and not re.fullmatch(r"[a-z0-9]{1,4}", name):
        raise PcteleportError(f"PCTELEPORT_LAB_INSTANCE={name!r}: use 1-4 lowercase letters or "
                              "digits, or leave it unset for the default lab")
    return name


def _octet(inst: str) -> int:
    return DEFAULT_OCTET if not inst else 100 + zlib.crc32(inst.encode()) % 100


def subnet(inst: str | None = None) -> str:
    """The addresses a lab instance uses."""
    return f"10.{_octet(instance() if inst is None else inst)}.0.0/16"


def clashing_instance(netns_names: set[str], inst: str | None = None) -> str | None:
    """Another lab instance, up (its namespaces exist), whose addresses are ours: two names can
    hash to the same 10.N/16, and both labs then answer on the same addresses."""
    inst = instance() if inst is None else inst
    mine = _octet(inst)
    for ns in netns_names:
        m = re.fullmatch(r"pcteleport-(?:([a-z0-9]{1,4})-)?(tokyo|osaka)", ns)
        if m is None:
            continue
        other = m.group(1) or ""
        if other != inst and _octet(other) == mine:
            return other or "(default)"
    return None


@dataclass(frozen=True)
class Site:
    name: str
    index: int  # 1-based; picks addresses
    inst: str = ""

    @property
    def netns(self) -> str:
        return f"pcteleport-{self.inst + '-' if self.inst else ''}{self.name}"

    @property
    def mgmt_host_iface(self) -> str:
        # The operator's (root namespace) end of the management veth; <= 15 characters.
        return f"pcl{self.inst}-m-{self.name}"[:15]

    @property
    def _net(self) -> str:
        return f"10.{_octet(self.inst)}"

    @property
    def mgmt_host_addr(self) -> str:
        return f"{self._net}.{self.index}.1"

    @property
    def mgmt_addr(self) -> str:
        """The site host's address as the operator reaches it (SSH, libvirt over SSH)."""
        return f"{self._net}.{self.index}.2"

    @property
    def wan_addr(self) -> str:
        """The site's address on the emulated WAN (migration streams, relays)."""
        return f"{self._net}.0.{self.index}"


def sites() -> tuple[Site, ...]:
    inst = instance()
    return tuple(Site(n, i + 1, inst) for i, n in enumerate(SITE_NAMES))


def site(name: str) -> Site:
    for s in sites():
        if s.name == name:
            return s
    raise PcteleportError(f"no lab site named {name!r}: use one of {', '.join(SITE_NAMES)}")


def peer(s: Site) -> Site:
    return next(o for o in sites() if o.name != s.name)
