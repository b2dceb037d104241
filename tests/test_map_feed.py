"""The send relay's maps during a teleport migration (sites/libvirt/migration/maps.py), with a
scripted guest agent and relay pair: what is fed, when it stops, what the log says."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from pcteleport.records import MigrationRecord, Mode, Phase
from pcteleport.sites.libvirt.migration import maps
from pcteleport.sites.libvirt.migration.journal import Journal
from pcteleport.teleport import mapfile

PAGE = 4096


class Agent:
    def __init__(self, answers: list) -> None:
        self.answers, self.calls = answers, 0

    def restorable_map(self, disk: str):
        self.calls += 1
        answer = self.answers[min(self.calls, len(self.answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return mapfile.RestorableMap(extents=answer).to_text(), {"pages": "1", "source": "module"}


class Relays:
    def __init__(self) -> None:
        self.fed: list[list] = []
        self.ended = threading.Event()
        self.map_problem = None

    def feed_map(self, text: str) -> None:
        self.fed.append(mapfile.parse_text(text).extents)

    def end_maps(self) -> None:
        self.ended.set()


def feed(answers: list, monkeypatch) -> tuple[maps.MapFeed, Relays, Journal]:
    monkeypatch.setattr(maps, "REFRESH_EVERY", 0.05)
    rec = MigrationRecord(run_id="r", vm="db", from_site="a", to_site="b", mode=Mode.TELEPORT)
    journal = Journal(rec, lambda ev: None)
    journal.phase(Phase.ITERATIVE, 1)
    plan = SimpleNamespace(data_serial="pctdata", data_disk="/srv/d.raw")
    relays = Relays()
    f = maps.MapFeed(plan, journal, Agent(answers), relays)  # type: ignore[arg-type]
    f.relay_ready.set()
    return f, relays, journal


def wait(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_refreshes_send_only_what_the_relay_has_not_had(monkeypatch):
    a, b, c = (0, 0, PAGE), (PAGE, 8 * PAGE, PAGE), (2 * PAGE, 9 * PAGE, PAGE)
    f, relays, journal = feed([[a], [a, b], [a, b], [a, b, c]], monkeypatch)
    f.start()
    wait(lambda: len(relays.fed) == 3)
    f.stop()
    assert relays.fed == [[a], [b], [c]]
    assert relays.ended.wait(2)
    assert f.refreshes >= 3
    assert any("map refresh" in line.text and "1 pages cached since" in line.text
               for line in journal.record.log)


def test_refreshes_stop_at_the_switch_over(monkeypatch):
    f, relays, journal = feed([[(0, 0, PAGE)]], monkeypatch)
    f.start()
    wait(lambda: relays.fed)
    journal.phase(Phase.STOP_AND_COPY, 1)
    assert relays.ended.wait(2)  # the relay's stdin ends: no map after the guest stopped
    calls = f.agent.calls
    time.sleep(0.2)
    assert f.agent.calls == calls


def test_a_failed_refresh_ends_the_refreshes_not_the_run(monkeypatch):
    f, relays, journal = feed([[(0, 0, PAGE)], RuntimeError("agent went away")], monkeypatch)
    f.start()
    assert relays.ended.wait(2)
    assert relays.map_problem is None and relays.fed == [[(0, 0, PAGE)]]
    assert any("map refresh stopped: agent went away" in line.text
               for line in journal.record.log)


@pytest.mark.parametrize("problem", [RuntimeError("no module"), TimeoutError("slow guest")])
def test_no_first_map_is_the_runs_problem(monkeypatch, problem):
    f, relays, _ = feed([problem], monkeypatch)
    f.start()
    wait(lambda: relays.map_problem is not None)
    assert relays.map_problem.startswith("teleport: no restorable map from the guest agent")
    assert relays.fed == []


def test_a_refresh_cut_by_the_switch_over_says_so(monkeypatch):
    f, relays, journal = feed([[(0, 0, PAGE)]], monkeypatch)

    def paused_mid_answer(disk):
        journal.phase(Phase.STOP_AND_COPY, 3)
        raise RuntimeError("the answer arrived cut short after 458752 bytes")

    f.start()
    wait(lambda: relays.fed)
    f.agent.restorable_map = paused_mid_answer
    assert relays.ended.wait(2)
    lines = [line.text for line in journal.record.log]
    assert any("map refresh 1 cut short by the switch-over" in x for x in lines), lines
    assert not any("cut short after" in x for x in lines)
