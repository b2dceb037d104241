"""The disks of a migration, as operators have them (issue 13): each writable disk a qcow2
overlay on a raw base image that every site's image cache holds with the same bytes.

Before the start, both sites' caches say whether the destination holds each base (by its
checksum, `sites/images.py`). Then, as Nova's block live migration does, the destination's
overlay is created on its own base (`qemu-img create -f qcow2 -b BASE -F raw`, the same path and
virtual size), and libvirt's storage migration copies only the overlays' data
(VIR_MIGRATE_NON_SHARED_INC: QEMU mirrors the top layer over NBD) to the destination's WAN
address, so the disk traffic crosses the WAN beside the memory stream and is counted there.

A base missing or different at the destination: that disk cannot go as an overlay (its
destination would read other bytes under it), so the migration copies every disk whole
(VIR_MIGRATE_NON_SHARED_DISK; libvirt moves all disks of one migration the same way) into
stand-alone images, and teleport is off for that disk; the reason is one line in the log, and
`Backend.disk_plan` says it before the start. Read-only disks do not move (the destination
holds them).

Whatever this run created at the destination is removed again when the migration fails before
the switch-over; after a successful one the source's writable layers go (the VM runs from the
destination's now).
"""

from __future__ import annotations

import contextlib
import shlex
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import libvirt

from pcteleport.errors import PcteleportError
from pcteleport.records import DiskCopy, DiskMove
from pcteleport.sites import images
from pcteleport.sites.libvirt.migration.plan import MigrationFailed, Plan, fmt_bytes
from pcteleport.sites.libvirt.site_runtime import SiteRuntime, domain_disks

Log = Callable[[str], None]


@dataclass
class Storage:
    """What the storage step decided and made; the run holds it for the clean-up."""

    flags: int = 0
    params: dict[str, object] = field(default_factory=dict)
    created: list[str] = field(default_factory=list)  # images made at the destination
    whole: bool = False


def check_bases(plan: Plan) -> None:
    """Fill in each writable disk's copy and teleport from the sites' image caches."""
    moving = [d for d in plan.disks if d.writable]
    checks = images.compare_bases(plan.src, plan.dst, sorted({d.base for d in moving
                                                              if d.base}))
    for d in moving:
        check = checks.get(d.base) if d.base else None
        if not d.base:
            d.copy = DiskCopy.WHOLE
            d.reason = ("no base image under it: copied whole (teleport reads only from a base "
                        "both sites hold)")
        elif check is not None and check.state != "same":
            d.copy = DiskCopy.WHOLE
            d.reason = f"{check.reason}: teleport is off for {d.target} and it is copied whole"
        else:
            d.copy = DiskCopy.OVERLAY
        if d.reason and d.teleport:
            d.teleport = False
    whole = [d for d in moving if d.copy is DiskCopy.WHOLE]
    if whole:  # libvirt copies every disk of one migration the same way
        names = ", ".join(d.target for d in whole)
        for d in moving:
            if d.copy is DiskCopy.OVERLAY:
                d.copy = DiskCopy.WHOLE
                d.reason = (f"copied whole with {names} (libvirt moves every disk of a "
                            "migration the same way); its base is at the destination, so "
                            "teleport may still read from it")
    if not any(d.teleport and d.target == plan.data_target for d in plan.disks):
        plan.data_disk = ""  # (its serial stays: the guest still checks that disk after)


def prepare(plan: Plan, dom: libvirt.virDomain, log: Log, out: Storage) -> None:
    """Destination images made, libvirt's storage flags and parameters chosen."""
    check_bases(plan)
    moving = [d for d in plan.disks if d.writable]
    for d in plan.disks:
        if d.reason:
            log(f"disk {d.target}: {d.reason}")
    if not moving:
        return
    if not plan.dst.config.wan_addr:
        raise MigrationFailed(f"site {plan.dst.name} has no wan_addr in the sites config: "
                              "the disks cannot be copied over the WAN")
    out.whole = any(d.copy is DiskCopy.WHOLE for d in moving)
    sizes = {d.target: _capacity(dom, d.target) for d in moving}
    busy = _paths_in_use(plan.dst)
    for d in moving:
        if d.path in busy:
            raise MigrationFailed(f"{d.path} at {plan.dst.name} is the disk of VM "
                                  f"{busy[d.path]} there: nothing was started")
    out.created = [d.path for d in moving]  # before: a half-done creation is cleaned up too
    create_destination_images(plan.dst, moving, sizes, log)
    out.flags = (libvirt.VIR_MIGRATE_NON_SHARED_DISK if out.whole
                 else libvirt.VIR_MIGRATE_NON_SHARED_INC)
    out.params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = [d.target for d in moving]
    # NBD straight to the destination's WAN address (libvirt picks the port): the disk traffic
    # crosses the WAN, and the memory stream may still go through the relays on 127.0.0.1
    out.params[libvirt.VIR_MIGRATE_PARAM_DISKS_URI] = f"tcp://{plan.dst.config.wan_addr}"
    total = sum(d.overlay_bytes for d in moving)
    how = ("whole (every block of each disk that holds data)" if out.whole
           else "as their writable layers (qcow2 overlays; the bases are at both sites)")
    held = "" if out.whole else f"; the overlays hold {fmt_bytes(total)}"
    log(f"storage: {', '.join(d.target for d in moving)} go {how} over NBD to "
        f"{plan.dst.name} {plan.dst.config.wan_addr}{held}")
    if plan.auto_converge:
        # auto-converge slows the vCPUs so the memory converges; a guest that writes its
        # disks as fast as the WAN carries the mirror keeps them from ever being in sync
        # (libvirt starts the memory only then): its writes wait for the mirror instead
        out.flags |= libvirt.VIR_MIGRATE_NON_SHARED_SYNCHRONOUS_WRITES
        log("storage: with auto-converge, the guest's disk writes complete only once the "
            "mirror has sent them too (libvirt's synchronous writes), so the disks' copy "
            "converges however fast the guest writes")


def destination_xml(dom: libvirt.virDomain, plan: Plan, base_xml: str | None = None) -> str:
    """The domain as the destination must define it when the disks go whole: their images
    stand alone (no backing base)."""
    root = ET.fromstring(base_xml or dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE))
    whole = {d.target for d in plan.disks if d.writable and d.copy is DiskCopy.WHOLE}
    for disk in root.iterfind("./devices/disk"):
        target = disk.find("target")
        if target is None or target.get("dev") not in whole:
            continue
        for backing in disk.findall("backingStore"):
            disk.remove(backing)
        ET.SubElement(disk, "backingStore")  # empty: the image has no backing file
    return ET.tostring(root, encoding="unicode")


def _capacity(dom: libvirt.virDomain, target: str) -> int:
    try:
        return int(dom.blockInfo(target)[0])
    except libvirt.libvirtError as exc:
        raise MigrationFailed(f"libvirt cannot tell the size of disk {target}: "
                              f"{exc.get_error_message()}") from None


def _paths_in_use(site: SiteRuntime) -> dict[str, str]:
    """Disk image paths of the VMs defined at `site` -> the VM's name."""
    out: dict[str, str] = {}
    try:
        for other in site.conn().listAllDomains():
            with contextlib.suppress(libvirt.libvirtError):
                for d in domain_disks(other.XMLDesc(0)):
                    out[d.path] = other.name()
    except (libvirt.libvirtError, PcteleportError):
        # libvirt there does not answer (killed mid-migration): the clean-up still removes what
        # this run created (before, it gave up silently and left the overlays)
        pass
    return out


def create_destination_images(site: SiteRuntime, disks: list[DiskMove], sizes: dict[str, int],
                              log: Log) -> None:
    """Each disk's image at the destination, at the path the VM uses (one command for all): an
    overlay on the same base (copy OVERLAY), or a stand-alone qcow2 (WHOLE), both of the disk's
    virtual size."""
    lines = ["set -e"]
    for d in disks:
        create = ["qemu-img", "create", "-q", "-f", "qcow2"]
        if d.copy is DiskCopy.OVERLAY:
            create += ["-b", d.base, "-F", "raw"]
        create += [d.path, str(sizes[d.target])]
        path = shlex.quote(d.path)
        lines += [f"mkdir -p {shlex.quote(str(PurePosixPath(d.path).parent))}",
                  f"if [ -e {path} ]; then echo leftover {path}; fi", shlex.join(create)]
    try:
        out = site.host.check(["sh", "-c", "\n".join(lines)], timeout=60)
    except PcteleportError as exc:
        raise MigrationFailed(f"could not create the disks' images at {site.name}: {exc}"
                              ) from None
    for line in out.splitlines():
        if line.startswith("leftover "):
            log(f"replaced a leftover {line.split(' ', 1)[1]} at {site.name} (no VM there uses "
                "it)")


def remove_images(site: SiteRuntime, paths: list[str], log: Log, why: str) -> None:
    """Remove disk images at `site` (best effort: a failure is a line in the log)."""
    if not paths:
        return
    try:
        site.host.check(["rm", "-f", "--", *paths], timeout=30)
        log(f"removed {', '.join(paths)} at {site.name} ({why})")
    except PcteleportError as exc:
        log(f"could not remove {', '.join(paths)} at {site.name}: {exc}")


def discard_destination(plan: Plan, out: Storage, log: Log) -> None:
    """The migration failed before the switch-over: what this run created at the destination
    goes, unless a VM there uses it after all (then it is left, and said)."""
    if not out.created:
        return
    busy = _paths_in_use(plan.dst)
    mine = [p for p in out.created if p not in busy]
    for p in out.created:
        if p in busy:
            log(f"left {p} at {plan.dst.name}: VM {busy[p]} there uses it")
    remove_images(plan.dst, mine, log, "the migration did not complete")
    out.created = []


def drop_source_layers(plan: Plan, out: Storage, log: Log) -> None:
    """After a successful migration the source's copies of the moved disks are stale: the VM
    writes the destination's. They go, as Nova removes a migrated instance's source disks."""
    moved = [d.path for d in plan.disks if d.writable]
    if not moved or not out.created:
        return
    out.created = []  # they are the VM's disks now, not this run's leftovers
    busy = _paths_in_use(plan.src)
    remove_images(plan.src, [p for p in moved if p not in busy], log,
                  f"VM {plan.vm} now writes its disks at {plan.dst.name}")


NO_SPACE = "No space left on device"


def disk_full(plan: Plan, error: str) -> str:
    """The one line for a storage copy that failed with ENOSPC: libvirt names the disk but
    not the host. The mirror writes at the destination, so say how much room its disks'
    directories have left (asked over SSH; only libvirt's words if it cannot be asked)."""
    dirs = sorted({str(PurePosixPath(d.path).parent) for d in plan.disks if d.writable})
    room = ""
    if dirs:
        try:
            out = plan.dst.host.check(["df", "-Pk", "--", *dirs], timeout=20)
            free = [f"{fields[5]} {int(fields[3]) * 1024 / 2**20:.1f} MiB free"
                    for fields in (line.split() for line in out.splitlines()[1:])
                    if len(fields) >= 6 and fields[3].isdigit()]
            room = f" ({', '.join(dict.fromkeys(free))})" if free else ""
        except PcteleportError:
            pass
    return (f"the disk at {plan.dst.name} holding the VM's images is full{room}: the disks' "
            f"copy could not be written there; {error}")
