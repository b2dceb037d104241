"""Offline re-prediction: each stored run's prediction made again from the inputs its record
kept (measured just before it), with the current model, beside the prediction it was given
then and what it measured. So a change to pcteleport.predict is checked against every run
already made, without the lab (`pcteleport bench --repredict FILE.json ...`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from pcteleport.bench.report import read_json
from pcteleport.predict import DEFAULT_MODEL, PredictionModel, predict, t_min
from pcteleport.records import (
    MigrationRecord,
    ModePrediction,
    PredictionInputs,
    Result,
    from_dict,
)


@dataclass
class Repredicted:
    source: str  # the bench run's file stem, e.g. web-default-141622
    record: MigrationRecord
    then: ModePrediction | None  # what the record kept
    then_t_min_s: float | None
    now: ModePrediction
    now_t_min_s: float | None

    @property
    def mode(self) -> str:
        return str(self.record.mode)

    def wan_error(self, p: ModePrediction | None) -> float | None:
        wan = self.record.wan_bytes
        return (p.wan_bytes - wan) / wan if p and wan else None

    def time_error(self, p: ModePrediction | None) -> float | None:
        total = self.record.total_s
        if p is None or p.total_s is None or not total:
            return None
        return (p.total_s - total) / total


def inputs_of(record: MigrationRecord) -> PredictionInputs | None:
    """The inputs the record kept, completed from the record where an older one lacks a
    field: the WAN profile and its rate, as stamped on the record's link."""
    kept = record.prediction_inputs
    if kept is None:
        return None
    inp = dataclasses.replace(kept, problems=list(kept.problems))
    if not inp.wan_profile and record.wan is not None:
        inp.wan_profile = record.wan.profile
        inp.profile_rate_bytes_per_s = record.wan.rate_bytes_per_s
    return inp


def repredict(record: MigrationRecord, source: str = "",
              model: PredictionModel = DEFAULT_MODEL) -> Repredicted | None:
    """None for a run whose record kept no inputs, or that did not finish (nothing to
    compare: an aborted or failed run's bytes and time are those of a migration cut short)."""
    inp = inputs_of(record)
    if inp is None or record.result is not Result.OK or not record.total_s \
            or not record.wan_bytes:
        return None
    return Repredicted(source, record, record.prediction, record.t_min_s,
                       predict(inp, record.mode, model), t_min(inp, model))


def load_records(path: Path) -> list[MigrationRecord]:
    """The measured runs of a bench JSON (not its bring-home migrations)."""
    data = read_json(path, frozenset({"runs"}))
    return [from_dict(MigrationRecord, r["record"]) for r in data["runs"]
            if isinstance(r, dict) and "record" in r]


def repredict_files(paths: list[Path],
                    model: PredictionModel = DEFAULT_MODEL) -> list[Repredicted]:
    out = []
    for path in paths:
        stem = path.name.removesuffix(".json")
        out += [r for r in (repredict(rec, stem, model) for rec in load_records(path)) if r]
    return out


def _num(v: float | None, fmt: str = "{:.1f}") -> str:
    return "–" if v is None else fmt.format(v)


def _signed(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:+.0f} %"


def table(rows: list[Repredicted]) -> str:
    """Markdown: per run, measured, predicted then (the record's) and now (this model)."""
    lines = [
        "| run | VM | mode | WAN (MB) | then (MB) | error | now (MB) | error "
        "| time (s) | then (s) | error | now (s) | error | T_min then (s) | T_min now (s) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        rec, then, now = r.record, r.then, r.now
        lines.append(
            f"| {r.source} | {rec.vm} | {r.mode} | {rec.wan_bytes / 1e6:.1f} "
            f"| {_num(then.wan_bytes / 1e6 if then else None)} | {_signed(r.wan_error(then))} "
            f"| {now.wan_bytes / 1e6:.1f} | {_signed(r.wan_error(now))} "
            f"| {_num(rec.total_s)} | {_num(then.total_s if then else None)} "
            f"| {_signed(r.time_error(then))} | {_num(now.total_s)} "
            f"| {_signed(r.time_error(now))} | {_num(r.then_t_min_s)} "
            f"| {_num(r.now_t_min_s)} |")
    return "\n".join(lines) + "\n"
