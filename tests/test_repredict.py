"""`pcteleport bench --repredict`: each stored run predicted again from the inputs it kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pcteleport.bench.repredict import inputs_of, repredict, repredict_files, table
from pcteleport.predict import predict, t_min
from pcteleport.records import (
    Composition,
    MigrationRecord,
    Mode,
    ModePrediction,
    PredictionInputs,
    Result,
    WanLink,
    to_dict,
)
from tests.record_factory import GIB, MIB, constructed_run


def _inputs(goodput: float = 90e6) -> PredictionInputs:
    return PredictionInputs(
        ram_bytes=GIB, composition=Composition(total=GIB, free=400 * MIB, cache_clean=300 * MIB,
                                               restorable=250 * MIB),
        restorable_bytes=250 * MIB, zero_fraction=0.4, zstd_ratio=0.25, zstd_ratio_rest=0.3,
        dirty_rate_bytes_per_s=0.0, link_rate_bytes_per_s=goodput, rtt_ms=50.0,
        max_downtime_ms=1000.0)


def _run(mode: Mode, run_id: str, kept: bool = True) -> MigrationRecord:
    r = constructed_run(mode=mode, run_id=run_id, wan_bytes=500 * MIB)
    r.wan = WanLink("osaka", "default", 12.5e6, 50.2)
    if kept:
        r.prediction_inputs = _inputs()
        # what an older model said: nothing like what the current one says
        r.prediction = ModePrediction(mode, 1, 0.5)
        r.t_min_s = 0.1
    return r


def _bench_json(path: Path, records: list[MigrationRecord]) -> Path:
    runs = [{"mode": str(r.mode), "round": 1, "record": to_dict(r)} for r in records]
    path.write_text(json.dumps({"scenario": "web", "wan": "default", "runs": runs}))
    return path


def test_older_inputs_get_the_links_profile_and_rate_from_the_record() -> None:
    inp = inputs_of(_run(Mode.STOCK, "a"))
    assert inp is not None
    assert inp.wan_profile == "default" and inp.profile_rate_bytes_per_s == 12.5e6
    assert inputs_of(_run(Mode.STOCK, "b", kept=False)) is None


def test_a_run_is_predicted_again_with_the_current_model_beside_what_it_had(
        tmp_path: Path) -> None:
    records = [_run(Mode.STOCK, "s"), _run(Mode.TELEPORT, "t"), _run(Mode.ZSTD, "z", False)]
    rows = repredict_files([_bench_json(tmp_path / "web-default-120000.json", records)])
    assert [(r.source, r.mode) for r in rows] == [("web-default-120000", "stock"),
                                                  ("web-default-120000", "teleport")]
    stock = rows[0]
    # the kept goodput (90 MB/s) is above the link's profile (12.5 MB/s): the profile bounds it
    bounded = _inputs(12.5e6)
    assert stock.now == predict(bounded, Mode.STOCK)
    assert stock.now_t_min_s == pytest.approx(t_min(bounded))
    assert stock.then == ModePrediction(Mode.STOCK, 1, 0.5) and stock.then_t_min_s == 0.1
    # errors are against what the run measured
    assert stock.wan_error(stock.now) == pytest.approx(
        (stock.now.wan_bytes - 500 * MIB) / (500 * MIB))
    assert stock.time_error(stock.then) == pytest.approx((0.5 - 4.5) / 4.5)
    # the same VM at the same moment has one T_min, whichever mode ran
    assert rows[1].now_t_min_s == pytest.approx(stock.now_t_min_s)
    text = table(rows)
    assert text.count("\n") == 4 and "| web-default-120000 | web | teleport |" in text


def test_an_unfinished_run_has_nothing_to_compare() -> None:
    r = _run(Mode.STOCK, "f")
    r.total_s, r.wan_bytes = None, 0
    assert repredict(r) is None
    # an aborted run has bytes and a time, of a migration cut short
    cut = _run(Mode.STOCK, "g")
    assert repredict(cut) is not None
    cut.result = Result.ABORTED
    assert repredict(cut) is None
