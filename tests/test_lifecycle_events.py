"""libvirt's event loop belongs to the process, not to a backend: lifecycle events (and the
keepalive answers that keep libvirtd from closing an idle connection, which makes a
destination kill its incoming VM) keep flowing for a backend opened after another one was
closed in the same process. The suite's own lab modules run that way, one backend after
another in one pytest process. Against libvirt's test driver (test:///default)."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import libvirt

from pcteleport.sites.libvirt.backend import LibvirtBackend
from pcteleport.sites.libvirt.lifecycle import LifecycleEvent


def _backend(tmp_path: Path) -> LibvirtBackend:
    toml = tmp_path / "sites.toml"
    toml.write_text('[[site]]\nname = "tokyo"\nlibvirt_uri = "test:///default"\n'
                    'ssh = { host = "127.0.0.1" }\n')
    return LibvirtBackend.from_config(toml)


def _stop_and_start(backend: LibvirtBackend) -> list[LifecycleEvent]:
    site = backend.sites_rt["tokyo"]
    seen: list[LifecycleEvent] = []
    started = threading.Event()

    def on_event(ev: LifecycleEvent) -> None:
        seen.append(ev)
        if ev.event == libvirt.VIR_DOMAIN_EVENT_STARTED:
            started.set()

    site.events.add(on_event)
    try:
        dom = site.domain("test")  # the test driver's own running domain
        dom.destroy()
        dom.create()
        assert started.wait(10), f"no STARTED event within 10 s (saw {seen})"
    finally:
        site.events.remove(on_event)
    return seen


def test_events_reach_a_backend_opened_after_another_was_closed(tmp_path) -> None:
    first = _backend(tmp_path)
    events = _stop_and_start(first)
    assert [e.event for e in events][:2] == [libvirt.VIR_DOMAIN_EVENT_STOPPED,
                                             libvirt.VIR_DOMAIN_EVENT_STARTED]
    first.close()

    second = _backend(tmp_path)
    try:
        events = _stop_and_start(second)
        assert {e.site for e in events} == {"tokyo"}
        assert all(e.vm == "test" for e in events)
    finally:
        second.close()


def test_the_event_thread_outlives_every_backend(tmp_path) -> None:
    _backend(tmp_path).close()
    assert any(t.name == "libvirt-events" and t.is_alive() for t in threading.enumerate())


class _Dom:
    """A domain as listAllDomains gives it; `paused_for` a reason, or None when running."""

    def __init__(self, uuid: str, name: str, paused_for: int | None, xml: str) -> None:
        self.uuid, self._name, self.paused_for, self.xml = uuid, name, paused_for, xml
        self.xml_asked = 0

    def UUIDString(self) -> str:
        return self.uuid

    def name(self) -> str:
        return self._name

    def info(self) -> list[int]:
        state = libvirt.VIR_DOMAIN_RUNNING if self.paused_for is None else \
            libvirt.VIR_DOMAIN_PAUSED
        return [state, 262144, 262144, 1, 0]

    def state(self) -> list[int]:
        return [self.info()[0], self.paused_for or 1]

    def XMLDesc(self, flags: int = 0) -> str:
        self.xml_asked += 1
        if self.paused_for == libvirt.VIR_DOMAIN_PAUSED_MIGRATION:
            # what libvirt does while an incoming migration holds the job lock
            raise AssertionError("asked for the XML of a domain a migration holds")
        return self.xml


def _conn_of(dom: _Dom):
    conn = SimpleNamespace(listAllDomains=lambda: [dom], getVersion=lambda: 10_000_002)
    return lambda: conn


XML = ("<domain type='qemu'><name>web</name><devices><disk type='file' device='disk'>"
       "<source file='/srv/vms/web/vdb.qcow2'/><target dev='vdb'/></disk></devices></domain>")


def test_an_incoming_vm_is_listed_as_migrating_without_asking_for_its_xml(tmp_path) -> None:
    """libvirt's XML takes the domain's job lock, which an incoming migration holds to its
    end: the destination's listing must not wait 30 s for it (the console polls it)."""
    backend = _backend(tmp_path)
    try:
        site = backend.sites_rt["tokyo"]
        running = _Dom("u-1", "web", None, XML)
        site.conn = _conn_of(running)  # type: ignore[method-assign]
        (vm,) = backend.vms("tokyo")
        assert str(vm.state) == "running" and [d.target for d in vm.disks] == ["vdb"]
        incoming = _Dom("u-1", "web", libvirt.VIR_DOMAIN_PAUSED_MIGRATION, XML)
        site.conn = _conn_of(incoming)  # type: ignore[method-assign]
        (vm,) = backend.vms("tokyo")
        assert incoming.xml_asked == 0
        assert str(vm.state) == "migrating" and [d.target for d in vm.disks] == ["vdb"]
        unknown = _Dom("u-2", "db", libvirt.VIR_DOMAIN_PAUSED_MIGRATION, XML)
        site.conn = _conn_of(unknown)  # type: ignore[method-assign]
        (vm,) = backend.vms("tokyo")
        assert unknown.xml_asked == 0 and vm.disks == [] and str(vm.state) == "migrating"
        paused = _Dom("u-3", "batch", libvirt.VIR_DOMAIN_PAUSED_USER, XML)
        site.conn = _conn_of(paused)  # type: ignore[method-assign]
        (vm,) = backend.vms("tokyo")
        assert paused.xml_asked == 1 and str(vm.state) == "paused"
    finally:
        backend.close()
