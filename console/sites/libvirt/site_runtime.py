"""One configured site at run time: its libvirt connection and its host over SSH.

libvirt-python is blocking and thread-safe per connection: callers use it from worker
threads, never from an event loop. The connection is opened on first use and reopened when
libvirt reports it dead.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import libvirt

from pcteleport.engine import version_text
from pcteleport.errors import PcteleportError
from pcteleport.sites.config import SiteConfig
from pcteleport.sites.libvirt.lifecycle import LifecycleHub
from pcteleport.sites.remote import LoopThread, SiteHost

# libvirt prints every error to stderr by default; we turn them into one-line messages.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


class SiteError(PcteleportError):
    pass


@dataclass(frozen=True)
class DomainDisk:
    target: str  # vda, vdb, ...
    path: str  # the image the VM writes (its overlay, for a disk on a base image)
    serial: str
    readonly: bool
    format: str = "raw"  # of `path`: raw, qcow2, ...
    base: str = ""  # the image under `path` (its backing file), "" for a disk of one image
    base_format: str = ""

    @property
    def writable(self) -> bool:
        return not self.readonly

    @property
    def overlay(self) -> str:
        """The writable layer on a base image ("" for a disk of one image)."""
        return self.path if self.base else ""

    @property
    def image(self) -> str:
        """The raw image a restorable map's disk offsets can be read from at every site: the
        base under an overlay (the map's pages are teleported only where their bytes are the
        base's), the disk itself for a read-only raw replica, else ""."""
        if self.base and self.base_format == "raw":
            return self.base
        if not self.base and self.format == "raw":
            return self.path
        return ""


def is_tcg(xml: str) -> bool:
    """libvirt domain type 'qemu' is an emulated CPU (TCG); 'kvm' is hardware-assisted."""
    return ET.fromstring(xml).get("type") == "qemu"


def qemu_dac_label(xml: str) -> str | None:
    """The user:group libvirt runs the domain's QEMU as (the live XML's DAC seclabel, e.g.
    `+64055:+64055` for libvirt-qemu:kvm on Debian), or None when libvirt does not say (the
    DAC driver off, as in the lab: QEMU runs as root)."""
    for sec in ET.fromstring(xml).findall("seclabel"):
        if sec.get("model") == "dac" and sec.get("relabel", "yes") != "no":
            label = (sec.findtext("label") or sec.findtext("imagelabel") or "").strip()
            if label:
                return label
    return None


def _source_path(elem: ET.Element | None) -> str:
    source = elem.find("source") if elem is not None else None
    return (source.get("file") or source.get("dev") or "") if source is not None else ""


def domain_disks(xml: str) -> list[DomainDisk]:
    out = []
    for disk in ET.fromstring(xml).iterfind("./devices/disk"):
        if disk.get("device", "disk") != "disk":
            continue
        target = disk.find("target")
        path = _source_path(disk)
        if not path or target is None:
            continue
        driver = disk.find("driver")
        fmt = (driver.get("type") if driver is not None else None) or "raw"
        backing = disk.find("backingStore")
        base = _source_path(backing)
        base_fmt = ""
        if base and backing is not None:
            f = backing.find("format")
            base_fmt = (f.get("type") if f is not None else None) or "raw"
        serial = disk.findtext("serial") or ""
        out.append(DomainDisk(target.get("dev", ""), path, serial,
                              disk.find("readonly") is not None, fmt, base, base_fmt))
    return out


class SiteRuntime:
    def __init__(self, config: SiteConfig, loop: LoopThread) -> None:
        self.config = config
        self.name = config.name
        self.host = SiteHost(config, loop)
        self.events = LifecycleHub(config.name)
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()
        self._emulators: dict[str, str] = {}

    def conn(self) -> libvirt.virConnect:
        with self._lock:
            if self._conn is not None:
                try:
                    if self._conn.isAlive():
                        return self._conn
                except libvirt.libvirtError:
                    pass
                self._conn = None
            try:
                self._conn = libvirt.open(self.config.libvirt_uri)
            except libvirt.libvirtError as exc:
                raise SiteError(
                    f"cannot reach libvirt at {self.name} ({exc.get_error_message()}): "
                    "check the site is up and its libvirt_uri in the sites config"
                ) from None
            with contextlib.suppress(libvirt.libvirtError):  # (drivers without keepalive)
                self._conn.setKeepAlive(5, 3)  # notice a dead site within ~20 s
            self.events.attach(self._conn)
            return self._conn

    def lookup(self, name_or_uuid: str) -> libvirt.virDomain | None:
        """The VM's domain here, or None when this site has no such VM. A connection that
        failed (libvirtd dropped it: keepalive timeout on a loaded host, a restart) is not
        "no such VM": it is opened again once, and a second failure raises SiteError."""
        for attempt in (1, 2):
            conn = self.conn()
            try:
                if len(name_or_uuid) == 36 and name_or_uuid.count("-") == 4:
                    return conn.lookupByUUIDString(name_or_uuid)
                return conn.lookupByName(name_or_uuid)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return None
                self.forget_connection()
                if attempt == 2:
                    raise SiteError(f"libvirt at {self.name} did not answer "
                                    f"({exc.get_error_message()})") from None
        return None  # pragma: no cover - the loop returns or raises

    def forget_connection(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    self._conn.close()
            self._conn = None

    def domain(self, name_or_uuid: str) -> libvirt.virDomain:
        dom = self.lookup(name_or_uuid)
        if dom is None:
            raise SiteError(f"no VM '{name_or_uuid}' at {self.name}")
        return dom

    def find_domain(self, name_or_uuid: str) -> libvirt.virDomain | None:
        """None when the site has no such VM; SiteError when the site could not be asked."""
        return self.lookup(name_or_uuid)

    def wan_tx_bytes(self) -> int | None:
        """Bytes sent on the site's WAN interface so far (None if unknown)."""
        iface = self.config.wan_iface
        if not iface:
            return None
        out = self.host.run(["cat", f"/sys/class/net/{iface}/statistics/tx_bytes"], timeout=10)
        return int(out.stdout.strip()) if out.status == 0 and out.stdout.strip() else None

    def wan_meter(self) -> WanMeter | None:
        """A running reader of the WAN byte counter (cheaper than a command per sample)."""
        return WanMeter(self) if self.config.wan_iface else None

    def libvirt_version(self) -> str:
        return version_text(self.conn().getLibVersion())

    def qemu_version(self) -> str:
        """The hypervisor libvirt drives at this site ("10.0.2"); "" if it does not say."""
        try:
            return version_text(self.conn().getVersion())
        except libvirt.libvirtError:
            return ""

    def emulator_version(self, emulator: str) -> str:
        """The version of a QEMU binary on this host (a domain's <emulator> may not be the
        site's default one), asked once per binary; "" if it cannot be told."""
        if emulator not in self._emulators:
            version = ""
            try:
                res = self.host.run([emulator, "--version"], timeout=20)
                m = re.search(r"version (\d+\.\d+(?:\.\d+)?)", res.stdout)
                version = m.group(1) if res.status == 0 and m else ""
            except PcteleportError:
                pass
            self._emulators[emulator] = version
        return self._emulators[emulator]

    def domain_qemu_version(self, xml: str) -> str:
        """The version of the QEMU a domain runs: its <emulator>'s, else the site's."""
        emulator = ET.fromstring(xml).findtext("./devices/emulator") or ""
        return (self.emulator_version(emulator) if emulator else "") or self.qemu_version()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(libvirt.libvirtError):
                    self._conn.close()
                self._conn = None
        self.host.close()


class WanMeter:
    """The site's WAN tx byte counter, streamed twice a second by one remote loop."""

    def __init__(self, site: SiteRuntime) -> None:
        path = f"/sys/class/net/{site.config.wan_iface}/statistics/tx_bytes"
        self.latest: int | None = None
        self.latest_at = 0.0  # time.monotonic() when `latest` arrived
        self._proc = site.host.spawn(
            ["sh", "-c", f"while cat {path}; do sleep 0.5; done"], self._on_line)

    def _on_line(self, line: str) -> None:
        if line.strip().isdigit():
            self.latest, self.latest_at = int(line), time.monotonic()

    def close(self) -> None:
        self._proc.close()  # the loop's next write fails and it ends
