"""The switch-over sized by the WAN (sites/libvirt/migration/switchover.py) on both kinds of
QEMU: >= 8.2 is told the WAN's drain rate (avail-switchover-bandwidth, by QMP passthrough);
older QEMU (Debian 12's 7.2) gets its downtime limit scaled by drain rate / QEMU's rate
(libvirt's virDomainMigrateSetMaxDowntime) and the operator's limit back after a failed run.
A fake domain stands for libvirt; the lab measures the real thing (docs/results.md)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import libvirt
import pytest

from pcteleport.records import MigrationRecord, Mode
from pcteleport.sites.libvirt.migration import modes, switchover
from pcteleport.sites.libvirt.migration.journal import Journal
from pcteleport.sites.libvirt.migration.plan import AbortSignal
from pcteleport.sites.libvirt.migration.transfer import Transfer
from pcteleport.teleport import events
from pcteleport.teleport.counters import CodecCounters

MB = 1_000_000


class Dom:
    """A source domain: QEMU >= 8.2 (`new`) or older, its downtime limit, what it was told."""

    def __init__(self, new: bool, limit_ms: int = 1000, refuse_limit: bool = False) -> None:
        self.new, self.limit_ms, self.refuse_limit = new, limit_ms, refuse_limit
        self.limits: list[int] = []  # every migrateSetMaxDowntime
        self.qmp: list[dict] = []  # every migrate-set-parameters

    def migrateGetMaxDowntime(self, flags: int = 0) -> int:
        return self.limit_ms

    def migrateSetMaxDowntime(self, ms: int, flags: int = 0) -> int:
        if self.refuse_limit:
            raise libvirt.libvirtError("Requested operation is not valid")
        self.limits.append(ms)
        self.limit_ms = ms
        return 0


@pytest.fixture(autouse=True)
def monitor(monkeypatch):
    """QMP through libvirt's passthrough, answered as the fake domain's QEMU would."""

    def qemu_monitor(dom: Dom, text: str, flags: int) -> str:
        cmd = json.loads(text)
        if cmd["execute"] == "query-migrate-parameters":
            params = {"downtime-limit": dom.limit_ms}
            if dom.new:
                params[switchover.PARAM] = 0
            return json.dumps({"return": params})
        if cmd["execute"] == "migrate-set-parameters":
            if not dom.new:
                return json.dumps({"error": {"desc": f"Parameter '{switchover.PARAM}' unexpected"}})
            dom.qmp.append(cmd["arguments"])
            return json.dumps({"return": {}})
        raise AssertionError(cmd)

    monkeypatch.setattr(switchover.libvirt_qemu, "qemuMonitorCommand", qemu_monitor)


def journal() -> Journal:
    return Journal(MigrationRecord(run_id="r", vm="web", from_site="tokyo", to_site="osaka",
                                   mode=Mode.TELEPORT), lambda ev: None)


def plan(link: float | None = None):
    return SimpleNamespace(vm="web", mode=Mode.TELEPORT,
                           wan=SimpleNamespace(rate_bytes_per_s=link) if link else None,
                           src=SimpleNamespace(name="tokyo"), dst=SimpleNamespace(name="osaka"))


def sized(dom: Dom, link: float | None = None) -> tuple[Transfer, Journal]:
    """The prepare step's choice for `dom`, and a transfer holding it."""
    j, out, p = journal(), modes.Prepared(), plan(link)
    modes.size_switchover(p, dom, j, out)  # type: ignore[arg-type]
    return Transfer(p, j, out, AbortSignal()), j  # type: ignore[arg-type]


def relay_stats(t: float, sent: int, wan: int, wan_bps: float) -> events.Stats:
    return events.Stats(counters=CodecCounters(pages_sent=sent, wan_bytes=wan),
                        wan_rate_bps=int(wan_bps), t=t)


def lines(j: Journal) -> str:
    return "\n".join(line.text for line in j.record.log)


# --- the arithmetic ---------------------------------------------------------------------------


def test_the_limit_scales_by_drain_over_qemus_rate():
    # QEMU writes 250 MB/s into the relay, the WAN drains 12.5 MB/s: QEMU would stop the guest
    # with 250 MB left at a 1 s limit; at 50 ms its threshold is the 12.5 MB the WAN drains in 1 s
    assert switchover.scaled_limit_ms(1000, 12.5 * MB, 250 * MB) == 50
    assert switchover.scaled_limit_ms(2000, 30 * MB, 60 * MB) == 1000


def test_the_scaled_limit_is_clamped():
    # a WAN faster than QEMU's writes does not allow a longer pause than the operator's
    assert switchover.scaled_limit_ms(1000, 80 * MB, 20 * MB) == 1000
    # nor does a huge burst make the limit 0: QEMU must still be able to stop the guest
    assert switchover.scaled_limit_ms(1000, 1 * MB, 10_000 * MB) == switchover.FLOOR_MS == 1
    # nothing measured yet: the operator's limit as it is
    assert switchover.scaled_limit_ms(1000, 0, 250 * MB) == 1000
    assert switchover.scaled_limit_ms(1000, 12 * MB, 0) == 1000


def test_the_scale_uses_qemus_highest_recent_rate():
    s = switchover.ScaledDowntime(1000)
    assert s.update(None, 100 * MB) is None  # no drain rate yet
    assert s.update(10 * MB, 0) == 100  # 0: the job copied only the disks in that second
    assert s.update(10 * MB, 20 * MB) == 100  # a slow second between runs of teleported pages
    for _ in range(switchover.WINDOW):  # ... until the burst left the window
        last = s.update(10 * MB, 20 * MB)
    assert last == 500


def test_qemu_is_given_a_new_limit_only_when_it_moved():
    s = switchover.ScaledDowntime(1000)
    assert s.worth_telling(500)
    s.applied = 500
    assert not s.worth_telling(510) and s.worth_telling(540)
    s.applied = 2
    assert not s.worth_telling(3) and s.worth_telling(4)  # a 1 ms step is noise


# --- which path a domain gets -----------------------------------------------------------------


def test_qemu_8_2_and_later_is_told_the_rate_and_keeps_its_limit():
    dom = Dom(new=True)
    t, j = sized(dom)
    assert t.prepared.sizer is not None and t.prepared.downtime is None
    assert j.record.switchover_sizing == "avail-switchover-bandwidth"
    t._size_switchover(dom, relay_stats(1, 0, 0, 0), {"memory_bps": 250 * MB})
    t._size_switchover(dom, relay_stats(2, 1000, 2_048_000, 100 * MB), {"memory_bps": 250 * MB})
    assert dom.qmp == [{switchover.PARAM: 12_500_000}]  # the WAN's rate: 100 Mbit/s
    assert dom.limits == []  # the downtime limit stays the operator's


def test_older_qemu_gets_its_downtime_limit_scaled():
    dom = Dom(new=False, limit_ms=1000)
    t, j = sized(dom)
    assert t.prepared.downtime is not None and t.prepared.downtime.limit_ms == 1000
    assert j.record.switchover_sizing == "downtime-limit"
    # the WAN drains 100 Mbit/s = 12.5 MB/s of guest memory; QEMU writes 250 MB/s
    t._size_switchover(dom, relay_stats(1, 0, 0, 100 * MB), {"memory_bps": 250 * MB})
    assert dom.limits == [50]
    # no new relay stats, QEMU's rate rose further: scaled again from the same drain rate
    t._size_switchover(dom, relay_stats(1, 0, 0, 100 * MB), {"memory_bps": 500 * MB})
    assert dom.limits == [50, 25]
    assert dom.qmp == []  # no avail-switchover-bandwidth where QEMU has none
    assert "downtime limit 50 ms of 1000: the WAN drains 11.9 MiB/s" in lines(j)


def test_sizing_can_be_turned_off_to_compare(monkeypatch):
    monkeypatch.setenv(modes.SIZING_ENV, "0")
    for new in (True, False):
        dom = Dom(new=new)
        t, j = sized(dom)
        assert t.prepared.sizer is None and t.prepared.downtime is None
        assert j.record.switchover_sizing == "off"
        t._size_switchover(dom, relay_stats(1, 0, 0, 100 * MB), {"memory_bps": 250 * MB})
        assert dom.limits == [] and dom.qmp == []


# --- the operator's limit back ----------------------------------------------------------------


def test_a_failed_run_gives_the_operator_their_limit_back():
    dom = Dom(new=False, limit_ms=2000)
    t, _ = sized(dom)
    t._size_switchover(dom, relay_stats(1, 0, 0, 100 * MB), {"memory_bps": 250 * MB})
    assert dom.limit_ms == 100
    t.forget_switchover(dom)  # the run failed before the switch-over: the source QEMU lives on
    assert dom.limit_ms == 2000 and dom.limits == [100, 2000]


def test_a_completed_migration_leaves_the_gone_source_alone():
    dom = Dom(new=False)
    t, _ = sized(dom)
    t._size_switchover(dom, relay_stats(1, 0, 0, 100 * MB), {"memory_bps": 250 * MB})
    t.migrated = True  # the source QEMU has quit; the destination's never held the scaled limit
    t.forget_switchover(dom)
    assert dom.limits == [50]


def test_a_run_that_never_scaled_changes_nothing():
    dom = Dom(new=False)
    t, _ = sized(dom)
    t.forget_switchover(dom)
    assert dom.limits == []


def test_a_refused_limit_is_one_line_and_no_more_tries():
    dom = Dom(new=False, refuse_limit=True)
    t, j = sized(dom)
    for second in range(3):
        t._size_switchover(dom, relay_stats(second, 0, 0, 100 * MB), {"memory_bps": 250 * MB})
    assert lines(j).count("could not scale the downtime limit") == 1
    t.forget_switchover(dom)  # nothing was set: nothing to give back (and no second error)
    assert "could not give back" not in lines(j)


def test_the_record_says_which_limit_qemu_stopped_the_guest_by():
    from pcteleport.sites.libvirt.lifecycle import LifecycleEvent

    dom = Dom(new=False)
    t, j = sized(dom)
    t.plan.vm_uuid = "u"  # type: ignore[attr-defined]
    t._size_switchover(dom, relay_stats(1, 0, 0, 100 * MB), {"memory_bps": 250 * MB})
    t._on_lifecycle(LifecycleEvent(site="tokyo", vm_uuid="u", vm="web",
                                   event=libvirt.VIR_DOMAIN_EVENT_SUSPENDED,
                                   detail=libvirt.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED, at=0.0))
    assert "guest paused for the switch-over with the downtime limit at 50 ms of 1000" in lines(j)
