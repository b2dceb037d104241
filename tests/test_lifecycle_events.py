"""libvirt's event loop belongs to the process, not to a backend: lifecycle events (and the
keepalive answers that keep libvirtd from closing an idle connection, which makes a
destination kill its incoming VM) keep flowing for a backend opened after another one was
closed in the same process. The suite's own lab modules run that way, one backend after
another in one pytest process. Against libvirt's test driver (test:///default)."""

from __future__ import annotations

import threading
from pathlib import Path

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
