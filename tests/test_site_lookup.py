"""Where a VM runs is never guessed from a failed question: a site whose libvirt connection
dropped (libvirtd closes it on a keepalive timeout when the host is loaded) is asked again on a
new connection, and if it still cannot answer the VM is "unknown there", not "not there".
Against libvirt's own test driver (test:///default, a real libvirt in this process)."""

from __future__ import annotations

import libvirt
import pytest

from pcteleport.errors import PcteleportError
from pcteleport.sites.config import SiteConfig, SshLogin
from pcteleport.sites.libvirt.site_runtime import SiteRuntime
from pcteleport.sites.remote import LoopThread


class Dropped:
    """A connection libvirtd has closed but the client has not noticed yet."""

    def __init__(self, real: libvirt.virConnect) -> None:
        self.real = real

    def isAlive(self) -> int:
        return 1

    def lookupByName(self, name: str) -> libvirt.virDomain:
        raise libvirt.libvirtError("Cannot write data: Broken pipe")

    def close(self) -> int:
        return self.real.close()


@pytest.fixture
def site() -> SiteRuntime:
    rt = SiteRuntime(SiteConfig("tokyo", "test:///default", SshLogin("127.0.0.1")),
                     LoopThread())
    yield rt
    rt.forget_connection()


def test_a_vm_that_is_not_there_is_none_and_one_that_is_is_found(site) -> None:
    assert site.lookup("no-such-vm") is None
    assert site.find_domain("no-such-vm") is None
    assert site.lookup("test").name() == "test"  # the test driver's own running domain
    with pytest.raises(PcteleportError, match="no VM 'no-such-vm' at tokyo"):
        site.domain("no-such-vm")


def test_a_dropped_connection_is_opened_again_not_read_as_no_vm(site) -> None:
    site.conn()
    site._conn = Dropped(site._conn)  # type: ignore[assignment]
    dom = site.lookup("test")
    assert dom is not None and dom.isActive()
    assert not isinstance(site._conn, Dropped)


def test_a_site_that_cannot_answer_raises_instead_of_saying_not_here(site, monkeypatch) -> None:
    real_open = libvirt.open
    monkeypatch.setattr(libvirt, "open", lambda uri: Dropped(real_open(uri)))
    monkeypatch.setattr(Dropped, "setKeepAlive", lambda self, i, c: 0, raising=False)
    site.events.attach = lambda conn: None  # type: ignore[method-assign]
    with pytest.raises(PcteleportError, match="libvirt at tokyo did not answer"):
        site.lookup("test")
    with pytest.raises(PcteleportError, match="did not answer"):
        site.find_domain("test")
