"""Runs side by side: filtering and the CSV / Markdown exports of the compare screen.

Pure functions over MigrationRecords, so the benchmark can write the same tables.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from pcteleport.predict import inputs_from_composition, predict
from pcteleport.records import MigrationRecord, Mode


@dataclass(frozen=True)
class Metric:
    key: str
    title: str
    unit: str  # unit of the raw value in exports

    def value(self, r: MigrationRecord) -> float | None:
        if self.key == "total_s":
            return r.total_s
        if self.key == "wan_bytes":
            return float(r.wan_bytes) if r.result is not None else None
        if self.key == "downtime_ms":
            return r.downtime_ms
        if self.key == "throughput_after":
            return r.throughput_after.value if r.throughput_after else None
        raise KeyError(self.key)


METRICS: tuple[Metric, ...] = (
    Metric("total_s", "total time", "s"),
    Metric("wan_bytes", "WAN bytes", "bytes"),
    Metric("downtime_ms", "downtime", "ms"),
    Metric("throughput_after", "throughput after", ""),
)


def predicted_wan_bytes(r: MigrationRecord) -> int | None:
    """What the prediction said this run would send: the one it kept from before its start,
    else the model's from the composition it started with (an older record)."""
    if r.prediction is not None:
        return r.prediction.wan_bytes
    if r.composition is None:
        return None
    ram = r.samples[0].total_bytes if r.samples else None
    link = r.wan.rate_bytes_per_s if r.wan else None
    inputs = inputs_from_composition(r.composition, link,
                                     cap_bytes_per_s=r.bandwidth_cap_bytes_per_s, ram_bytes=ram)
    return predict(inputs, r.mode).wan_bytes


def filter_runs(records: Iterable[MigrationRecord], vm: str | None = None,
                mode: Mode | None = None) -> list[MigrationRecord]:
    return [r for r in records
            if (vm is None or r.vm == vm) and (mode is None or r.mode == mode)]


COLUMNS = ("started", "run_id", "vm", "from", "to", "mode", "result", "total_s", "downtime_ms",
           "wan_bytes", "guest_bytes", "pages_teleported", "pages_zero", "pages_sent",
           "throughput_after", "throughput_unit", "disk_wan_bytes", "memory_wan_bytes")


def _row(r: MigrationRecord) -> list[object]:
    ta = r.throughput_after
    return [
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r.started_at)), r.run_id, r.vm,
        r.from_site, r.to_site, str(r.mode), "" if r.result is None else str(r.result),
        "" if r.total_s is None else round(r.total_s, 3),
        "" if r.downtime_ms is None else round(r.downtime_ms, 1),
        r.wan_bytes, r.guest_bytes, r.pages.teleported, r.pages.zero, r.pages.sent,
        "" if ta is None else ta.value, "" if ta is None else ta.unit,
        r.disk_wan_bytes, r.memory_wan_bytes,
    ]


def to_csv(records: Sequence[MigrationRecord]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in records:
        w.writerow(_row(r))
    return out.getvalue()


def to_markdown(records: Sequence[MigrationRecord]) -> str:
    """A table with raw numbers plus, per VM, each run's total time and WAN bytes as a ratio to
    that VM's stock run (the paper reports ratios)."""
    head = ("vm", "mode", "route", "result", "total (s)", "× stock", "WAN (MiB)", "× stock",
            "downtime (ms)", "throughput after")
    stock = {r.vm: r for r in records if r.mode is Mode.STOCK and r.total_s}
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        s = stock.get(r.vm)
        t_ratio = f"{r.total_s / s.total_s:.2f}" if s and s.total_s and r.total_s else "–"
        w_ratio = f"{r.wan_bytes / s.wan_bytes:.2f}" if s and s.wan_bytes else "–"
        ta = r.throughput_after
        cells = (
            r.vm, str(r.mode), f"{r.from_site} → {r.to_site}",
            "running" if r.result is None else str(r.result),
            "–" if r.total_s is None else f"{r.total_s:.1f}", t_ratio,
            f"{r.wan_bytes / 2**20:.1f}", w_ratio,
            "–" if r.downtime_ms is None else f"{r.downtime_ms:.0f}",
            "–" if ta is None else f"{ta.value:g} {ta.unit}",
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
