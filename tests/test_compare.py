"""Compare: filters and the CSV / Markdown exports."""

from __future__ import annotations

import csv
import io

from pcteleport.compare import COLUMNS, filter_runs, to_csv, to_markdown
from pcteleport.records import Mode
from tests.record_factory import MIB, constructed_run

RUNS = [
    constructed_run(Mode.STOCK, run_id="s", seconds=10, wan_bytes=900 * MIB),
    constructed_run(Mode.TELEPORT, run_id="t", seconds=3, wan_bytes=300 * MIB),
    constructed_run(Mode.TELEPORT, vm="tpcc", run_id="x", throughput=None),
]


def test_filter_by_vm_and_mode() -> None:
    assert [r.run_id for r in filter_runs(RUNS, vm="web")] == ["s", "t"]
    assert [r.run_id for r in filter_runs(RUNS, mode=Mode.TELEPORT)] == ["t", "x"]
    assert [r.run_id for r in filter_runs(RUNS, vm="web", mode=Mode.STOCK)] == ["s"]


def test_csv_has_a_header_and_one_row_per_run() -> None:
    rows = list(csv.DictReader(io.StringIO(to_csv(RUNS))))
    assert list(rows[0]) == list(COLUMNS)
    assert [r["run_id"] for r in rows] == ["s", "t", "x"]
    assert rows[1]["wan_bytes"] == str(300 * MIB) and rows[1]["total_s"] == "3.5"
    assert rows[2]["throughput_after"] == ""


def test_markdown_gives_ratios_to_the_same_vms_stock_run() -> None:
    md = to_markdown(RUNS).splitlines()
    assert md[0].startswith("| vm | mode |") and len(md) == 2 + len(RUNS)
    teleport_row = md[3]
    assert "| 0.33 |" in teleport_row  # 3.5 s / 10.5 s
    assert "| 300.0 | 0.33 |" in teleport_row  # WAN MiB and its ratio
    assert "| – |" in md[4]  # tpcc has no stock run to compare with


def test_predicted_wan_bytes_come_from_the_runs_own_composition() -> None:
    from pcteleport.compare import predicted_wan_bytes
    from pcteleport.predict import inputs_from_composition, keep_prediction, predict

    r = RUNS[1]
    assert r.composition is not None and r.wan is not None
    inputs = inputs_from_composition(r.composition, r.wan.rate_bytes_per_s,
                                     ram_bytes=r.samples[0].total_bytes)
    assert predicted_wan_bytes(r) == predict(inputs, r.mode).wan_bytes
    kept = constructed_run()
    inputs.zstd_ratio = 0.1  # a measured input the composition alone does not give
    keep_prediction(kept, inputs)
    assert kept.prediction is not None
    assert predicted_wan_bytes(kept) == kept.prediction.wan_bytes
    assert predicted_wan_bytes(constructed_run()) is not None
    bare = constructed_run()
    bare.composition = None
    assert predicted_wan_bytes(bare) is None
