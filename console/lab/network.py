"""The lab's namespaces and links: one network namespace per site, a management veth from the
operator's namespace to each site (never shaped), and the WAN device `wan0` in each site.

The WAN is a veth pair shaped by netem where the kernel has netem, otherwise a persistent tun in
each site (with /32 routes to the peer) shaped by tbf and joined by the userspace delay line."""

from __future__ import annotations

import os

from pcteleport.errors import PcteleportError
from pcteleport.lab import shell
from pcteleport.lab.topology import MGMT_IFACE, WAN_IFACE, WAN_MTU, Site, peer, sites
from pcteleport.lab.wanprofiles import PROFILES


def wan_tcp_rmem() -> str:
    """net.ipv4.tcp_rmem for a site: a socket starts with a receive buffer of twice the largest
    profile's bandwidth-delay product, rounded up to a power of two.

    With the kernel's default (128 KB) a socket's window is ~64 KB until autotuning grows it,
    and on the lab it sometimes never did: libvirt's one TLS migration stream then crossed the
    100 Mbit/50 ms WAN at 1.1 MiB/s for minutes and did not converge (docs/results.md). This
    is the tuning WAN hosts get anyway (long fat networks)."""
    bdp = max(p.bdp_bytes for p in PROFILES.values())
    initial = 1 << (int(2 * bdp) - 1).bit_length()
    return f"4096 {initial} {max(initial, 32 << 20)}"


def ensure_netns(s: Site) -> None:
    if s.netns not in shell.netns_names():
        shell.run(["ip", "netns", "add", s.netns])
    shell.run(["ip", "-n", s.netns, "link", "set", "lo", "up"])
    shell.run(["ip", "netns", "exec", s.netns, "sysctl", "-q", "-w",
               f"net.ipv4.tcp_rmem={wan_tcp_rmem()}"])


def _link_exists(ifname: str, netns: str | None = None) -> bool:
    cmd = ["ip", *(["-n", netns] if netns else []), "link", "show", "dev", ifname]
    return shell.run(cmd, check=False).returncode == 0


def ensure_mgmt(s: Site) -> None:
    """veth operator <-> site; /24 on both ends so only this site's addresses route there."""
    if not _link_exists(MGMT_IFACE, s.netns):
        if _link_exists(s.mgmt_host_iface):
            shell.run(["ip", "link", "del", s.mgmt_host_iface])
        shell.run(["ip", "link", "add", s.mgmt_host_iface, "type", "veth",
                   "peer", "name", MGMT_IFACE, "netns", s.netns])
    addrs = shell.run(["ip", "-br", "addr", "show", "dev", s.mgmt_host_iface]).stdout
    if f"{s.mgmt_host_addr}/24" not in addrs:
        shell.run(["ip", "addr", "add", f"{s.mgmt_host_addr}/24", "dev", s.mgmt_host_iface])
    shell.run(["ip", "link", "set", s.mgmt_host_iface, "up"])
    site_addrs = shell.run(["ip", "-n", s.netns, "-br", "addr", "show", "dev", MGMT_IFACE]).stdout
    if f"{s.mgmt_addr}/24" not in site_addrs:
        shell.run(["ip", "-n", s.netns, "addr", "add", f"{s.mgmt_addr}/24", "dev", MGMT_IFACE])
    shell.run(["ip", "-n", s.netns, "link", "set", MGMT_IFACE, "up"])


def remove_mgmt(s: Site) -> None:
    # Deleting the site's namespace removes the pair asynchronously: it may vanish meanwhile.
    if _link_exists(s.mgmt_host_iface):
        out = shell.run(["ip", "link", "del", s.mgmt_host_iface], check=False)
        if out.returncode != 0 and _link_exists(s.mgmt_host_iface):
            raise PcteleportError(f"cannot remove link {s.mgmt_host_iface}: {out.stderr.strip()}"
                                  " (remove it with `ip link del`)")


def kernel_has_netem() -> bool:
    """Try netem on a throwaway dummy link in a scratch namespace (the kernel loads no modules)."""
    ns = f"pcteleport-probe{os.getpid()}"
    shell.run(["ip", "netns", "add", ns], check=False)
    try:
        shell.run(["ip", "-n", ns, "link", "add", "probe0", "type", "dummy"], check=False)
        ok = shell.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "probe0", "root",
                        "netem", "delay", "1ms"], check=False).returncode == 0
    finally:
        shell.run(["ip", "netns", "del", ns], check=False)
    return ok


def wan_kind_present() -> str | None:
    """'tun' or 'veth' if the WAN device already exists at the first site."""
    out = shell.run(["ip", "-n", sites()[0].netns, "-d", "link", "show", "dev", WAN_IFACE],
                    check=False)
    if out.returncode != 0:
        return None
    return "tun" if " tun " in out.stdout or "tun type" in out.stdout else "veth"


def ensure_wan(kind: str) -> None:
    """Create `wan0` in both sites ('tun' for the userspace delay, 'veth' for netem)."""
    present = wan_kind_present()
    if present not in (None, kind):
        for s in sites():
            shell.run(["ip", "-n", s.netns, "link", "del", WAN_IFACE], check=False)
        present = None
    if present is None:
        if kind == "veth":
            a, b = sites()
            shell.run(["ip", "-n", a.netns, "link", "add", WAN_IFACE, "type", "veth",
                       "peer", "name", WAN_IFACE, "netns", b.netns])
        else:
            for s in sites():
                shell.run(["ip", "-n", s.netns, "tuntap", "add", "dev", WAN_IFACE, "mode", "tun"])
    for s in sites():
        other = peer(s)
        mtu = str(WAN_MTU if kind == "tun" else 1500)
        shell.run(["ip", "-n", s.netns, "link", "set", WAN_IFACE, "mtu", mtu, "up"])
        if kind == "veth":
            cidr, route = f"{s.wan_addr}/24", None
        else:
            cidr, route = f"{s.wan_addr}/32", f"{other.wan_addr}/32"
        addrs = shell.run(["ip", "-n", s.netns, "-br", "addr", "show", "dev", WAN_IFACE]).stdout
        if cidr not in addrs:
            shell.run(["ip", "-n", s.netns, "addr", "add", cidr, "dev", WAN_IFACE])
        if route:
            shell.run(["ip", "-n", s.netns, "route", "replace", route, "dev", WAN_IFACE,
                       "src", s.wan_addr])
