"""What a migration needs to know before it starts, and how it is read from the domain."""

from __future__ import annotations

import contextlib
import threading
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import libvirt

from pcteleport.backend import VERIFY_SAMPLE_PAGES
from pcteleport.errors import PcteleportError
from pcteleport.records import DiskCopy, DiskMove, Mode, WanLink
from pcteleport.sites.libvirt import guest_health
from pcteleport.sites.libvirt.site_runtime import DomainDisk, SiteRuntime, domain_disks
from pcteleport.teleport.layout import RamLayout

ROOT_SERIAL = "pctroot"
#: a migration that moves no byte (disk or memory) this long is abandoned: TCP would keep the
#: job waiting on a dead WAN for many minutes (tcp_retries2) with no word to the operator
STALL_S = 30.0


class MigrationFailed(PcteleportError):
    pass


class Aborted(PcteleportError):
    pass


@dataclass
class Plan:
    """What a migration needs to know up front."""

    vm: str
    vm_uuid: str
    src: SiteRuntime
    dst: SiteRuntime
    mode: Mode
    bandwidth_cap: float | None  # bytes/s
    #: the raw image the teleported disk's map offsets are read from, the same path and bytes
    #: at both sites: the base under its overlay (or a read-only raw replica); "" for none
    data_disk: str = ""
    data_serial: str = ""
    data_target: str = ""  # the teleported disk's target (vdb)
    #: every disk of the VM, how it moves (storage.py fills in what the sites' caches say)
    disks: list[DiskMove] = field(default_factory=list)
    wan: WanLink | None = None
    verify_pages: int = VERIFY_SAMPLE_PAGES  # 0: every cached page
    auto_converge: bool = False
    #: compare guest RAM page by page across the switch-over (the destination stays paused
    #: until it is compared; see ramcheck.py) — for soaks, it costs seconds per migration
    compare_ram: bool = False
    #: the VM's serial console file (the same path at every site), checked for crashes
    console_log: str = ""
    #: teleport frames in clear (authenticated only), for comparison
    insecure: bool = False
    #: measure the CPU of the processes carrying the migration at each side (cpu.py)
    measure_cpu: bool = False
    stall_s: float = STALL_S


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def data_disk_of(dom: libvirt.virDomain, configured: str = "") -> DomainDisk | None:
    """The disk teleport reads from: the configured one (by the path the VM uses, or by its
    image), else the first non-root disk with a raw image both sites hold (a base under an
    overlay, or a read-only raw replica), else the first non-root disk."""
    disks = domain_disks(dom.XMLDesc(0))
    return (next((d for d in disks if configured and configured in (d.path, d.image)), None)
            or next((d for d in disks if d.serial != ROOT_SERIAL and d.image), None)
            or next((d for d in disks if d.serial != ROOT_SERIAL), None))


def disk_moves(disks: list[DomainDisk]) -> list[DiskMove]:
    """Each disk as the domain's XML has it: writable ones move (their overlay, until the
    destination's cache says otherwise), read-only ones stay (the destination holds them).
    Teleport reads from every disk with a raw image both sites hold (a base under an overlay,
    or a read-only raw replica), root and data alike (`teleport_sources` orders them)."""
    return [DiskMove(target=d.target, path=d.path, base=d.base, writable=d.writable,
                      copy=(DiskCopy.OVERLAY if d.base else DiskCopy.WHOLE) if d.writable
                      else DiskCopy.NONE,
                      teleport=bool(d.image) and (d.base != "" or not d.writable),
                      serial=d.serial)
             for d in disks]


def teleport_sources(plan: Plan) -> list[DiskMove]:
    """The disks teleport reads from, in the relays' order: the data disk first (disk 0 keeps
    a one-disk stream's offsets as they always were), then the others in the VM's order."""
    sources = [d for d in plan.disks if d.teleport]
    return sorted(sources, key=lambda d: d.target != plan.data_target)


def raw_image(d: DiskMove) -> str:
    """The raw image a teleported disk's pages are read from at both sites."""
    return d.base or d.path


def ram_layout(dom: libvirt.virDomain) -> RamLayout:
    os_type = ET.fromstring(dom.XMLDesc(0)).find("./os/type")
    machine = os_type.get("machine", "") if os_type is not None else ""
    return RamLayout.for_machine(machine, dom.info()[1] * 1024)


def plan_for(vm: str, src: SiteRuntime, dst: SiteRuntime, mode: Mode,
             bandwidth_cap: float | None, data_disk: str = "",
             wan: WanLink | None = None, verify_pages: int = VERIFY_SAMPLE_PAGES,
             auto_converge: bool = False, compare_ram: bool = False, *,
             insecure: bool = False, measure_cpu: bool = False) -> Plan:
    dom = src.domain(vm)
    xml = dom.XMLDesc(0)
    chosen = data_disk_of(dom, data_disk)
    moves = disk_moves(domain_disks(xml))
    for m in moves:
        if m.writable:
            with contextlib.suppress(libvirt.libvirtError):
                m.overlay_bytes = int(dom.blockInfo(m.target)[1])  # allocated
    return Plan(
        vm=dom.name(), vm_uuid=dom.UUIDString(), src=src, dst=dst, mode=mode,
        bandwidth_cap=bandwidth_cap, data_disk=chosen.image if chosen else "",
        data_serial=chosen.serial if chosen else "",
        data_target=chosen.target if chosen else "", disks=moves, wan=wan,
        verify_pages=verify_pages, auto_converge=auto_converge, compare_ram=compare_ram,
        console_log=guest_health.console_log_of(xml), insecure=insecure,
        measure_cpu=measure_cpu,
    )


class AbortSignal:
    """The operator's abort, raised from any thread, noticed by the run between its steps."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def set(self, reason: str) -> None:
        self.reason = reason
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Aborted(self.reason)
