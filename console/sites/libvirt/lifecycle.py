"""Domain lifecycle events from libvirt's event loop (libvirtaio on our asyncio thread).

libvirt wants its event implementation registered before any connection is opened; after
that, each site connection reports lifecycle changes (started, suspended for migration,
resumed at the destination, stopped, ...) to the listeners registered here. The migration
run uses them to mark stop-and-copy and resume at the moment they happen.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import libvirt
import libvirtaio

from pcteleport.sites.remote import LoopThread

_registered = False
_lock = threading.Lock()


def use_event_loop(loop: LoopThread) -> None:
    """Register libvirtaio on `loop` (once per process, before connections are opened)."""
    global _registered
    with _lock:
        if _registered:
            return
        done = threading.Event()

        def register() -> None:
            libvirtaio.virEventRegisterAsyncIOImpl(loop=loop.loop)
            done.set()

        loop.loop.call_soon_threadsafe(register)
        done.wait(10)
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
