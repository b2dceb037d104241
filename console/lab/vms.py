"""Lab VMs through libvirt: define and start them at their home site, find where each one runs,
wait for its guest to boot. The lab itself talks to each site's libvirtd over the site's local
socket (it is on the same host); the console uses the `qemu+ssh://` URI from the sites config."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import libvirt

from pcteleport.errors import PcteleportError
from pcteleport.guestimage import GuestBoot
from pcteleport.lab import disks, domainxml, guestboot, shell
from pcteleport.lab import site as lab_site
from pcteleport.lab.paths import SITE_AGENT_DIR, SITE_VM_DIR, LabPaths
from pcteleport.lab.scenarios import VmSpec
from pcteleport.lab.topology import Site, site, sites

HOME_SITE = "tokyo"
STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}

# libvirt prints every error to stderr by default; the lab reports its own one-liners.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def local_uri(paths: LabPaths, s: Site) -> str:
    return f"qemu:///system?socket={paths.site(s.name).libvirt_sock}"


def connect(paths: LabPaths, s: Site) -> libvirt.virConnect:
    try:
        return libvirt.open(local_uri(paths, s))
    except libvirt.libvirtError as exc:
        raise PcteleportError(
            f"cannot reach libvirtd at {s.name} ({exc.get_error_message()}): "
            "run `pcteleport lab up`"
        ) from exc


@dataclass(frozen=True)
class VmState:
    name: str
    site: str
    state: str
    memory_mib: int
    vcpus: int
    persistent: bool
    #: {target, serial, writable, format, overlay, base, base_format} per disk; `overlay` is
    #: the writable qcow2 layer ("" for a disk of one image), `base` the image under it
    disks: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def disks_of(xml: str) -> list[dict[str, Any]]:
    from pcteleport.sites.libvirt.site_runtime import domain_disks

    return [{"target": d.target, "serial": d.serial, "path": d.path, "writable": d.writable,
             "format": d.format, "overlay": d.overlay, "base": d.base,
             "base_format": d.base_format} for d in domain_disks(xml)]


def list_vms(paths: LabPaths) -> list[VmState]:
    out = []
    for s in sites():
        conn = connect(paths, s)
        try:
            for dom in conn.listAllDomains():
                st, _reason = dom.state()
                info = dom.info()
                out.append(VmState(dom.name(), s.name, STATE_NAMES.get(st, str(st)),
                                   info[1] // 1024, info[3], bool(dom.isPersistent()),
                                   disks_of(dom.XMLDesc(0))))
        finally:
            conn.close()
    return out


def where(paths: LabPaths, vm: str) -> list[VmState]:
    return [v for v in list_vms(paths) if v.name == vm]


def prepare_site_dirs(paths: LabPaths, spec: VmSpec) -> None:
    """Per-VM directories at every site (a migration's destination QEMU writes there too)."""
    for s in sites():
        sp = paths.site(s.name)
        sp.host_path(SITE_VM_DIR / spec.name).mkdir(parents=True, exist_ok=True)
        sp.host_path(SITE_AGENT_DIR).mkdir(parents=True, exist_ok=True)


def ensure_vm(paths: LabPaths, spec: VmSpec, boot: GuestBoot | None = None) -> tuple[str, bool]:
    """Define and start `spec` at its home site unless it exists at some site already.

    Returns (site, started_now). A VM found shut off where it is defined is started there."""
    found = where(paths, spec.name)
    if found:
        v = found[0]
        if v.state in ("shutoff", "crashed"):
            _start(paths, site(v.site), spec.name)
            return v.site, True
        return v.site, False
    boot = boot or guestboot.lab_boot()
    vm_disks = disks.ensure_bases(paths, spec, boot)
    prepare_site_dirs(paths, spec)
    home = site(HOME_SITE)
    disks.create_overlays(paths, home, lab_site.require_holder(paths, home), vm_disks)
    conn = connect(paths, home)
    try:
        conn.defineXML(domainxml.domain_xml(spec, boot))
    except libvirt.libvirtError as exc:
        raise PcteleportError(f"libvirt at {home.name} refused VM {spec.name}: "
                              f"{exc.get_error_message()}") from exc
    finally:
        conn.close()
    _start(paths, home, spec.name)
    return home.name, True


def _start(paths: LabPaths, s: Site, vm: str) -> None:
    log = paths.site(s.name).host_path(domainxml.console_log(vm))
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_bytes(b"")  # a fresh log, so boot markers are this boot's
    conn = connect(paths, s)
    try:
        conn.lookupByName(vm).create()
    except libvirt.libvirtError as exc:
        raise PcteleportError(f"VM {vm} did not start at {s.name}: {exc.get_error_message()} "
                              f"(see {paths.site(s.name).log_libvirt}/qemu/{vm}.log)") from exc
    finally:
        conn.close()


def console_log(paths: LabPaths, site: str, vm: str) -> Path:
    return paths.site(site).host_path(domainxml.console_log(vm))


def wait_booted(paths: LabPaths, site: str, vm: str, timeout: float = 60) -> float:
    """Seconds until the guest printed its ready marker on the serial console."""
    log = console_log(paths, site, vm)
    start = time.monotonic()

    def ready() -> bool:
        try:
            text = log.read_text(errors="replace")
        except FileNotFoundError:
            return False
        if "PCTELEPORT-FAILED" in text:
            line = next(ln for ln in text.splitlines() if "PCTELEPORT-FAILED" in ln)
            raise PcteleportError(f"guest {vm} failed to boot: {line.strip()} (see {log})")
        return guestboot.READY_MARKER in text

    shell.wait_for(ready, timeout, f"guest {vm} to boot at {site} (see {log})", interval=0.1)
    return time.monotonic() - start



def wait_all_booted(paths: LabPaths, started: dict[str, tuple[str, float]],
                    timeout: float = 60) -> dict[str, float]:
    """Boot time of each VM: from its start (name -> (site, time.monotonic() at start)) until
    its ready marker showed up on the serial console; all polled together."""
    booted: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(booted) < len(started):
        for name, (where, t0) in started.items():
            if name in booted:
                continue
            log = console_log(paths, where, name)
            text = log.read_text(errors="replace") if log.exists() else ""
            if "PCTELEPORT-FAILED" in text:
                line = next(ln for ln in text.splitlines() if "PCTELEPORT-FAILED" in ln)
                raise PcteleportError(f"guest {name} failed to boot: {line.strip()} (see {log})")
            if guestboot.READY_MARKER in text:
                booted[name] = time.monotonic() - t0
        if time.monotonic() > deadline:
            late = ", ".join(sorted(set(started) - set(booted)))
            raise PcteleportError(f"guests {late} did not boot within {timeout:.0f} s: see their "
                                  f"console.log under {paths.root}/<site>/srv/vms/")
        time.sleep(0.1)
    return booted
