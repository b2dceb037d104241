"""Names and addresses of the lab: which network namespace, interface and address each site gets.

Every address lives inside a namespace the lab creates (10.77.0.0/16); the operator's side of each
management link is the only one in the root namespace."""

from __future__ import annotations

from dataclasses import dataclass

SITE_NAMES: tuple[str, ...] = ("tokyo", "osaka")
NETNS_PREFIX = "pcteleport-"
WAN_IFACE = "wan0"
MGMT_IFACE = "mgmt0"
WAN_MTU = 64000  # large frames keep the userspace delay line at a few hundred packets a second


@dataclass(frozen=True)
class Site:
    name: str
    index: int  # 1-based; picks addresses

    @property
    def netns(self) -> str:
        return f"{NETNS_PREFIX}{self.name}"

    @property
    def mgmt_host_iface(self) -> str:
        # The operator's (root namespace) end of the management veth; <= 15 characters.
        return f"pcl-m-{self.name}"[:15]

    @property
    def mgmt_host_addr(self) -> str:
        return f"10.77.{self.index}.1"

    @property
    def mgmt_addr(self) -> str:
        """The site host's address as the operator reaches it (SSH, libvirt over SSH)."""
        return f"10.77.{self.index}.2"

    @property
    def wan_addr(self) -> str:
        """The site's address on the emulated WAN (migration streams, relays)."""
        return f"10.77.0.{self.index}"


SITES: tuple[Site, ...] = tuple(Site(n, i + 1) for i, n in enumerate(SITE_NAMES))


def site(name: str) -> Site:
    for s in SITES:
        if s.name == name:
            return s
    known = ", ".join(SITE_NAMES)
    from console.errors import PcteleportError

    raise PcteleportError(f"no lab site named {name!r}: use one of {known}")


def peer(s: Site) -> Site:
    return next(o for o in SITES if o.name != s.name)
