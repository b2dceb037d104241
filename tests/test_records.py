"""Records: JSON round trip (any record), the exact summary shape, clear errors, the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pcteleport.record_store import RecordStore, default_records_dir
from pcteleport.records import (
    VM,
    Composition,
    DiskCopy,
    DiskMove,
    LogLine,
    MigrationCpu,
    MigrationRecord,
    MigrationSample,
    Mode,
    PageCounts,
    Phase,
    PhaseMark,
    ProcessCpu,
    RamCheck,
    RecordBuilder,
    RecordError,
    RelayCpu,
    Result,
    Site,
    WriteCheck,
)

finite = st.floats(allow_nan=False, allow_infinity=False)
st.register_type_strategy(float, finite)


@settings(max_examples=60, deadline=None)
@given(st.builds(MigrationRecord))
def test_migration_record_round_trips_through_json(record: MigrationRecord) -> None:
    assert MigrationRecord.from_json(record.to_json()) == record


@settings(max_examples=30, deadline=None)
@given(st.builds(Site), st.builds(VM), st.builds(Composition))
def test_inventory_records_round_trip(site: Site, vm: VM, comp: Composition) -> None:
    from pcteleport.records import from_json, to_json

    assert from_json(Site, to_json(site)) == site
    assert from_json(VM, to_json(vm)) == vm
    assert from_json(Composition, to_json(comp)) == comp


def test_summary_has_exactly_the_issue_5_11_14_and_16_keys() -> None:
    r = MigrationRecord(run_id="r1", vm="web", from_site="tokyo", to_site="osaka",
                        mode=Mode.TELEPORT, result=Result.OK, total_s=11.5, downtime_ms=306.0,
                        wan_bytes=134_000_000, guest_bytes=2**30,
                        pages=PageCounts(teleported=70_000, zero=120_000, sent=40_000),
                        map_refreshes=4, pages_teleported_later=1_500)
    s = r.summary()
    assert list(s) == ["vm", "from", "to", "mode", "result", "total_s", "downtime_ms",
                       "wan_bytes", "guest_bytes", "pages", "map_refreshes", "wan_encryption",
                       "memory_encryption", "disk_encryption", "switchover_sizing",
                       "disk_wan_bytes", "memory_wan_bytes", "disks", "predicted_wan_bytes",
                       "predicted_total_s", "t_min_s", "runs_at",
                       "guest_crashed", "ram_pages_differing", "writes_checked", "writes_lost",
                       "relay_cpu_s_per_gb", "migration_cpu_s_per_gb"]
    assert s["writes_checked"] is None and s["writes_lost"] is None  # not checked
    assert s["disks"] == [] and s["disk_wan_bytes"] == s["memory_wan_bytes"] == 0
    assert s["pages"] == {"teleported": 70_000, "zero": 120_000, "sent": 40_000,
                          "teleported_after_refresh": 1_500, "written_since_base": 0}
    assert s["map_refreshes"] == 4
    assert s["guest_crashed"] is False and s["ram_pages_differing"] is None
    assert s["relay_cpu_s_per_gb"] is None and s["migration_cpu_s_per_gb"] is None
    r.guest_console = ["Kernel panic - not syncing: Fatal exception in interrupt"]
    r.ram_check = RamCheck(pages=65536, differing=3, first=["0x1000"])
    r.runs_at = "nowhere"
    r.write_check = WriteCheck(journals=2, entries=900, checked=880, failed=1,
                               failures=["/var/lib/pcteleport/journals/tpcc.jsonl line 7: ..."])
    s = r.summary()
    assert (s["writes_checked"], s["writes_lost"]) == (880, 1) and not r.write_check.complete
    assert s["guest_crashed"] is True and s["ram_pages_differing"] == 3
    assert s["runs_at"] == "nowhere"
    assert MigrationRecord.from_json(r.to_json()) == r
    # issue 13: the disks, and the WAN bytes split between them and the memory
    r.disk_wan_bytes, r.memory_wan_bytes = 2_000_000, 132_000_000
    r.disks = [DiskMove("vda", "/srv/vms/web/vda.qcow2", "/srv/images/root.raw",
                        overlay_bytes=1_249_280),
               DiskMove("vdb", "/srv/vms/web/vdb.qcow2", "/srv/images/web-data.raw",
                        copy=DiskCopy.OVERLAY, teleport=True, overlay_bytes=856_064,
                        pages_teleported=70_000)]
    s = r.summary()
    assert s["disk_wan_bytes"] == 2_000_000 and s["memory_wan_bytes"] == 132_000_000
    assert s["disks"] == [
        {"target": "vda", "base": "/srv/images/root.raw", "overlay_bytes": 1_249_280,
         "pages_teleported": 0},
        {"target": "vdb", "base": "/srv/images/web-data.raw", "overlay_bytes": 856_064,
         "pages_teleported": 70_000}]
    assert MigrationRecord.from_json(r.to_json()) == r
    assert s["from"] == "tokyo" and s["mode"] == "teleport" and s["result"] == "ok"
    # issue 15: the relays' CPU per GB of guest memory
    r.relay_cpu = RelayCpu(send_s=1.2, recv_s=0.6, guest_memory_bytes=2 * 10**9,
                           send_s_per_gb=0.6, recv_s_per_gb=0.3)
    assert r.summary()["relay_cpu_s_per_gb"] == {"send": 0.6, "recv": 0.3}
    assert MigrationRecord.from_json(r.to_json()) == r
    # issue 16: the CPU of every process carrying the migration, a side unmeasured as None
    r.migration_cpu = MigrationCpu(
        send_s=1.5, recv_s=None, guest_memory_bytes=10**9, send_s_per_gb=1.5,
        recv_s_per_gb=None,
        processes=[ProcessCpu("source", "tokyo", "qemu", 0.3, {"main": 0.1, "mig/src/main": 0.2}),
                   ProcessCpu("source", "tokyo", "relay send", 1.2)],
        missing=["destination: QEMU at osaka: no report within 20 s"])
    assert r.summary()["migration_cpu_s_per_gb"] == {"send": 1.5, "recv": None}
    assert MigrationRecord.from_json(r.to_json()) == r
    json.dumps(s)  # serialisable as is


def test_record_json_uses_from_and_to_keys() -> None:
    r = MigrationRecord(run_id="r", vm="web", from_site="a", to_site="b", mode=Mode.STOCK)
    data = json.loads(r.to_json())
    assert data["from"] == "a" and data["to"] == "b" and "from_site" not in data


def test_reading_a_bad_record_names_the_field() -> None:
    good = json.loads(MigrationRecord(run_id="r", vm="web", from_site="a", to_site="b",
                                      mode=Mode.STOCK).to_json())
    bad_mode = dict(good, mode="warp")
    with pytest.raises(RecordError, match=r"mode.*'warp'.*stock"):
        MigrationRecord.from_json(json.dumps(bad_mode))
    missing = {k: v for k, v in good.items() if k != "vm"}
    with pytest.raises(RecordError, match="missing field 'vm'"):
        MigrationRecord.from_json(json.dumps(missing))
    with pytest.raises(RecordError, match="not JSON"):
        MigrationRecord.from_json("{nope")


def test_older_records_without_optional_fields_still_load() -> None:
    text = json.dumps({"run_id": "r", "vm": "web", "from": "a", "to": "b", "mode": "zstd",
                       "total_s": 12})
    r = MigrationRecord.from_json(text)
    assert r.total_s == 12.0 and isinstance(r.total_s, float) and r.samples == []
    assert r.relay_cpu is None and r.migration_cpu is None  # older than issues 15 and 16


def test_builder_accumulates_events_and_replays_them_in_time_order() -> None:
    r = MigrationRecord(run_id="r", vm="web", from_site="a", to_site="b", mode=Mode.TELEPORT)
    b = RecordBuilder(r)
    sample = MigrationSample(t=1.0, phase=Phase.ITERATIVE, guest_rate_bytes_per_s=1.0,
                             wan_rate_bytes_per_s=1.0, remaining_bytes=5, total_bytes=10,
                             pages=PageCounts(1, 2, 3))
    b.add(LogLine(1.0, "line"))
    b.add(sample)
    b.add(PhaseMark(Phase.PREPARE, 0.0))
    b.add(PhaseMark(Phase.ITERATIVE, 1.0, 1))
    assert r.pages == PageCounts(1, 2, 3)
    assert r.current_phase is Phase.ITERATIVE
    kinds = [type(e).__name__ for _, e in b.events()]
    assert kinds == ["PhaseMark", "PhaseMark", "MigrationSample", "LogLine"]


def _record(run_id: str, started: float) -> MigrationRecord:
    return MigrationRecord(run_id=run_id, vm="web", from_site="tokyo", to_site="osaka",
                           mode=Mode.TELEPORT, started_at=started, result=Result.OK)


def test_store_saves_and_loads_in_start_order_and_reports_bad_files(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    later = store.save(_record("b", 2_000_000_000.0))
    store.save(_record("a", 1_000_000_000.0))
    assert later.name.startswith("20330518T") and later.suffix == ".json"
    (tmp_path / "broken.json").write_text("{")
    result = store.load_all()
    assert [r.run_id for r in result.records] == ["a", "b"]
    assert len(result.problems) == 1 and "broken.json" in result.problems[0]
    assert not list(tmp_path.glob("*.tmp"))


def test_store_location_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PCTELEPORT_RECORDS", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_records_dir() == tmp_path / "pcteleport" / "records"
    monkeypatch.setenv("PCTELEPORT_RECORDS", str(tmp_path / "elsewhere"))
    assert default_records_dir() == tmp_path / "elsewhere"


def test_composition_from_the_real_guest_agent_adds_up() -> None:
    from pcteleport.guest.agent import Composition as AgentComposition

    data = AgentComposition().snapshot()  # this host's /proc/meminfo: the fallback source
    c = Composition.from_agent(data)
    parts = (c.free + c.anon + c.shmem + c.kernel + c.cache_clean + c.cache_dirty
             + c.cache_writeback)
    assert c.total > 0 and parts == c.total
    assert c.source in ("module", "fallback") and c.taken_at > 0


def test_composition_from_a_malformed_agent_answer_says_what_to_check() -> None:
    with pytest.raises(RecordError, match="same version"):
        Composition.from_agent({"total": 1})


def test_shipped_recordings_load_and_are_finished_runs() -> None:
    from pcteleport.record_store import read_record

    root = Path(__file__).resolve().parent.parent / "recordings"
    paths = sorted(root.glob("*.json"))
    for path in paths:
        r = read_record(path)
        assert r.result is not None and r.total_s is not None, path.name
        assert r.composition is not None and r.log, path.name
