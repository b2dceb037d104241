"""A stock libvirt live migration between lab sites, client-managed (`migrate3` with both
connections held by the caller), the stream carried by the shaped WAN: the destination QEMU
listens on the destination's WAN address, libvirt picks a fresh port from its range."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import libvirt

from console.errors import PcteleportError
from console.sites.lab import shell, site, vms
from console.sites.lab.paths import LabPaths
from console.sites.lab.topology import WAN_IFACE, Site

FLAGS = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PERSIST_DEST
         | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)


@dataclass(frozen=True)
class MigrationResult:
    vm: str
    src: str
    dst: str
    total_s: float
    downtime_ms: float | None
    data_bytes: int | None  # RAM bytes QEMU sent (libvirt's completed-job stats)
    wan_bytes: int  # bytes that left the source's WAN interface meanwhile


def wan_tx_bytes(paths: LabPaths, s: Site) -> int:
    """Bytes sent on a site's WAN interface (read from inside the site)."""
    holder = site.require_holder(paths, s)
    stat = f"/sys/class/net/{WAN_IFACE}/statistics/tx_bytes"
    return int(shell.run(shell.in_site(holder, ["cat", stat])).stdout.strip())


def migrate(paths: LabPaths, vm: str, src: Site, dst: Site,
            bandwidth_mib: int | None = None) -> MigrationResult:
    sconn, dconn = vms.connect(paths, src), vms.connect(paths, dst)
    try:
        try:
            dom = sconn.lookupByName(vm)
        except libvirt.libvirtError as exc:
            raise PcteleportError(f"VM {vm} is not at {src.name}: check `pcteleport lab status`"
                                  ) from exc
        params: dict[str, object] = {
            libvirt.VIR_MIGRATE_PARAM_URI: f"tcp://{dst.wan_addr}",
            libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS: dst.wan_addr,
        }
        if bandwidth_mib:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = bandwidth_mib
        before = wan_tx_bytes(paths, src)
        start = time.monotonic()
        try:
            dom.migrate3(dconn, params, FLAGS)
        except libvirt.libvirtError as exc:
            raise PcteleportError(f"migration of {vm} {src.name} -> {dst.name} failed: "
                                  f"{exc.get_error_message()} (the VM stays at {src.name})"
                                  ) from exc
        total = time.monotonic() - start
        wan = wan_tx_bytes(paths, src) - before
        stats: dict[str, int] = {}
        # Completed-job stats are best effort; the migration itself succeeded.
        with contextlib.suppress(libvirt.libvirtError):
            stats = dconn.lookupByName(vm).jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        return MigrationResult(vm, src.name, dst.name, total, stats.get("downtime"),
                               stats.get("memory_processed"), wan)
    finally:
        sconn.close()
        dconn.close()
