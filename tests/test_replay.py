"""The replay backend: recordings played back through the Backend contract."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from pcteleport.backend import MigrationRequest, ServiceError
from pcteleport.record_store import RecordStore
from pcteleport.records import LogLine, MigrationEvent, Mode, PhaseMark, RecordBuilder, Result
from pcteleport.sites.replay import ReplayBackend
from tests.record_factory import constructed_run


def test_inventory_comes_from_the_recording() -> None:
    b = ReplayBackend([constructed_run()])
    sites = {s.name: s for s in b.sites()}
    assert set(sites) == {"tokyo", "osaka"}
    link = sites["tokyo"].link_to("osaka")
    assert link is not None and link.rtt_ms == pytest.approx(50.3)
    assert sites["osaka"].link_to("tokyo") is not None
    (vm,) = b.vms("tokyo")
    assert vm.name == "web" and b.vms("osaka") == []
    assert b.composition(vm.uuid).restorable == 400 * 2**20
    with pytest.raises(ServiceError):
        b.vms("paris")


def test_playback_emits_every_event_in_order_then_the_vm_is_at_the_destination() -> None:
    run = constructed_run(seconds=3)
    b = ReplayBackend([run], speed=1000)
    got: list[MigrationEvent] = []
    request = b.autoplay()
    assert request == MigrationRequest("uuid-web", "osaka", Mode.TELEPORT, None)
    record = b.migrate(request, got.append)
    assert got == [e for _, e in RecordBuilder(run).events()]
    assert record.summary() == run.summary()
    assert [v.name for v in b.vms("osaka")] == ["web"] and b.vms("tokyo") == []


def test_playback_keeps_the_recorded_pace_divided_by_speed() -> None:
    run = constructed_run(seconds=2)  # 2.5 s long
    b = ReplayBackend([run], speed=10)
    start = time.monotonic()
    b.migrate(b.autoplay(), lambda e: None)  # type: ignore[arg-type]
    assert 0.2 <= time.monotonic() - start < 1.5


def test_abort_stops_playback_promptly() -> None:
    run = constructed_run(seconds=30)
    b = ReplayBackend([run], speed=1)
    seen: list[MigrationEvent] = []
    first = threading.Event()

    def sink(e: MigrationEvent) -> None:
        seen.append(e)
        first.set()

    result: list[object] = []
    worker = threading.Thread(target=lambda: result.append(b.migrate(b.autoplay(), sink)))
    worker.start()
    assert first.wait(2)
    b.abort("uuid-web")
    worker.join(2)
    assert not worker.is_alive()
    (record,) = result
    assert record.result is Result.ABORTED and "stopped" in record.error
    assert isinstance(seen[-1], LogLine) and "stopped" in seen[-1].text
    assert [v.name for v in b.vms("tokyo")] == ["web"]  # did not move


def test_a_migration_that_was_not_recorded_is_refused_clearly() -> None:
    b = ReplayBackend([constructed_run(mode=Mode.TELEPORT)])
    with pytest.raises(ServiceError, match="recordings hold: web tokyo→osaka teleport"):
        b.migrate(MigrationRequest("uuid-web", "osaka", Mode.STOCK), lambda e: None)


def test_a_second_recording_of_the_same_vm_plays_after_the_first_moved_it() -> None:
    stock = constructed_run(Mode.STOCK, run_id="s", seconds=1)
    tele = constructed_run(Mode.TELEPORT, run_id="t", seconds=1)
    b = ReplayBackend([stock, tele], speed=1000)
    assert b.migrate(MigrationRequest("uuid-web", "osaka", Mode.STOCK),
                     lambda e: None).run_id == "s"
    assert [v.name for v in b.vms("osaka")] == ["web"]
    # From osaka the dialog offers tokyo; the recorded teleport run still plays.
    assert b.migrate(MigrationRequest("uuid-web", "tokyo", Mode.TELEPORT),
                     lambda e: None).run_id == "t"


def test_from_files_and_bad_speed(tmp_path: Path) -> None:
    path = RecordStore(tmp_path).save(constructed_run())
    b = ReplayBackend.from_files([path], speed=2)
    assert "replay of" in b.title and b.records().records[0].run_id == "t1"
    with pytest.raises(ServiceError, match="speed"):
        ReplayBackend([constructed_run()], speed=0)
    with pytest.raises(ServiceError, match="nothing to replay"):
        ReplayBackend([])


def test_phase_marks_come_before_samples_at_the_same_time() -> None:
    b = ReplayBackend([constructed_run(seconds=1)], speed=1000)
    got: list[MigrationEvent] = []
    b.migrate(b.autoplay(), got.append)  # type: ignore[arg-type]
    assert isinstance(got[0], PhaseMark)
