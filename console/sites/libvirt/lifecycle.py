"""Domain lifecycle events from libvirt's own event loop, one per process.

libvirt wants its event implementation registered once per process, before any connection is
opened, and running for as long as any connection is open: it answers libvirtd's keepalive
pings (libvirtd closes a connection that misses them for 30 s, and a destination whose
connection closes kills the incoming VM) and delivers each site's lifecycle changes (suspended
for migration, resumed at the destination, stopped, ...) to the listeners registered here. So
the loop belongs to the process, not to a backend: a backend closed earlier in the same
process (a test module, a second console) must not take it along.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import libvirt

_log = logging.getLogger(__name__)
_registered = False
_lock = threading.Lock()


def _run_events() -> None:
    while True:
        try:
            libvirt.virEventRunDefaultImpl()
        except Exception:  # one bad callback must not end every connection's loop
            _log.exception("libvirt event loop iteration failed")
            time.sleep(0.1)


def use_event_loop() -> None:
    """Register libvirt's default event loop and run it in a daemon thread (once per process,
    before any connection is opened; later calls do nothing)."""
    global _registered
    with _lock:
        if _registered:
            return
        libvirt.virEventRegisterDefaultImpl()
        threading.Thread(target=_run_events, daemon=True, name="libvirt-events").start()
        _registered = True


@dataclass(frozen=True)
class LifecycleEvent:
    site: str
    vm_uuid: str
    vm: str
    event: int  # VIR_DOMAIN_EVENT_*
    detail: int  # VIR_DOMAIN_EVENT_<event>_*
    at: float  # time.monotonic() when it arrived

    @property
    def suspended_for_migration(self) -> bool:
        return (self.event == libvirt.VIR_DOMAIN_EVENT_SUSPENDED
                and self.detail == libvirt.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED)

    @property
    def resumed_after_migration(self) -> bool:
        return (self.event == libvirt.VIR_DOMAIN_EVENT_RESUMED
                and self.detail == libvirt.VIR_DOMAIN_EVENT_RESUMED_MIGRATED)


Listener = Callable[[LifecycleEvent], None]


class LifecycleHub:
    """Fans one connection's lifecycle events out to listeners (added and removed freely)."""

    def __init__(self, site: str) -> None:
        self.site = site
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()
        self._callback_id: int | None = None

    def attach(self, conn: libvirt.virConnect) -> None:
        if not _registered:
            return  # no event loop in this process: phases come from polling alone
        try:
            self._callback_id = conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_event, None)
        except libvirt.libvirtError:
            self._callback_id = None

    def _on_event(self, _conn: object, dom: libvirt.virDomain, event: int, detail: int,
                  _opaque: object) -> None:
        ev = LifecycleEvent(self.site, dom.UUIDString(), dom.name(), event, detail,
                            time.monotonic())
        with self._lock:
            listeners = list(self._listeners)
        for fn in listeners:
            with contextlib.suppress(Exception):  # a listener's bug must not stop events
                fn(ev)

    def add(self, fn: Listener) -> None:
        with self._lock:
            self._listeners.append(fn)

    def remove(self, fn: Listener) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._listeners.remove(fn)
