"""What `pcteleport bench` writes to `results/<date>/`: the JSON of the run (MigrationRecords and
workload timelines), a Markdown table, and SVG figures (bars per mode; the per-second
read-throughput timeline around the migration per mode, the paper's figure)."""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pcteleport.bench import svg
from pcteleport.bench.runner import CLEAR, ENCRYPTED, BenchOptions, ModeRun, describe
from pcteleport.errors import PcteleportError
from pcteleport.records import MigrationRecord, Mode


@dataclass
class ModeRow:
    mode: str
    runs: int
    ok: int
    migrated: int
    total_s: float | None
    wan_bytes: float | None
    disk_wan_bytes: float | None
    memory_wan_bytes: float | None
    downtime_ms: float | None
    teleported_pages: float | None
    read_during: float | None
    read_dip: float | None
    read_recovered_s: float | None
    read_never_recovered: int
    read_degraded_s: float | None
    work_during: float | None
    work_recovered_s: float | None
    #: the prediction made before each run (its record keeps it) against what it measured:
    #: mean signed error, (predicted - measured) / measured; T_min and the run's time over it
    predicted_wan_bytes: float | None = None
    predicted_total_s: float | None = None
    wan_error: float | None = None
    time_error: float | None = None
    t_min_s: float | None = None
    x_t_min: float | None = None
    #: "encrypted" or "clear" in an --encryption-cost run (runner.ModeRun.variant), else ""
    variant: str = ""
    #: the CPU of the processes carrying the migration (records.MigrationCpu), per side:
    #: seconds, and seconds per GB of guest memory moved
    send_cpu_s: float | None = None
    recv_cpu_s: float | None = None
    send_cpu_s_per_gb: float | None = None
    recv_cpu_s_per_gb: float | None = None

    @property
    def label(self) -> str:
        return f"{self.mode} {self.variant}" if self.variant else self.mode


def wan_error(r: ModeRun) -> float | None:
    p, rec = r.record.prediction, r.record
    return (p.wan_bytes - rec.wan_bytes) / rec.wan_bytes if p and rec.wan_bytes else None


def time_error(r: ModeRun) -> float | None:
    p, rec = r.record.prediction, r.record
    if p is None or p.total_s is None or not rec.total_s:
        return None
    return (p.total_s - rec.total_s) / rec.total_s


def x_t_min(r: ModeRun) -> float | None:
    rec = r.record
    return rec.total_s / rec.t_min_s if rec.total_s and rec.t_min_s else None


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def rows(runs: list[ModeRun]) -> list[ModeRow]:
    out = []
    for mode, variant in dict.fromkeys((str(r.mode), r.variant) for r in runs):
        tried = [r for r in runs if (str(r.mode), r.variant) == (mode, variant)]
        # Only runs that reached the destination count: a run that failed before moving the VM
        # has no migration time, bytes or downtime to compare.
        rs = [r for r in tried if r.migrated]

        def m(get: Callable[[ModeRun], float | None], rs: list[ModeRun] = rs) -> float | None:
            return _mean([get(r) for r in rs])

        out.append(ModeRow(
            mode=mode, runs=len(tried), ok=sum(r.ok for r in tried), migrated=len(rs),
            total_s=m(lambda r: r.record.total_s),
            wan_bytes=m(lambda r: float(r.record.wan_bytes) if r.record.wan_bytes else None),
            disk_wan_bytes=m(lambda r: float(r.record.disk_wan_bytes)
                             if r.record.wan_bytes else None),
            memory_wan_bytes=m(lambda r: float(r.record.memory_wan_bytes)
                               if r.record.wan_bytes else None),
            downtime_ms=m(lambda r: r.record.downtime_ms),
            teleported_pages=m(lambda r: float(r.record.pages.teleported)),
            read_during=m(lambda r: r.read_summary.during if r.read_summary else None),
            read_dip=m(lambda r: r.read_summary.dip if r.read_summary else None),
            read_recovered_s=m(lambda r: r.read_summary.recovered_s if r.read_summary else None),
            read_never_recovered=sum(1 for r in rs if r.read_summary and r.read_summary.baseline
                                     and r.read_summary.recovered_s is None),
            read_degraded_s=m(lambda r: r.read_summary.degraded_s if r.read_summary else None),
            work_during=m(lambda r: r.workload_summary.during if r.workload_summary else None),
            work_recovered_s=m(lambda r: r.workload_summary.recovered_s
                               if r.workload_summary else None),
            predicted_wan_bytes=m(lambda r: float(r.record.prediction.wan_bytes)
                                  if r.record.prediction else None),
            predicted_total_s=m(lambda r: r.record.prediction.total_s
                                if r.record.prediction else None),
            wan_error=m(wan_error), time_error=m(time_error),
            t_min_s=m(lambda r: r.record.t_min_s), x_t_min=m(x_t_min), variant=variant,
            send_cpu_s=m(lambda r: _cpu(r, "send_s")), recv_cpu_s=m(lambda r: _cpu(r, "recv_s")),
            send_cpu_s_per_gb=m(lambda r: _cpu(r, "send_s_per_gb")),
            recv_cpu_s_per_gb=m(lambda r: _cpu(r, "recv_s_per_gb")),
        ))
    return out


def _cpu(r: ModeRun, name: str) -> float | None:
    """A figure of the run's migration CPU (None: not measured, or not all of that side)."""
    mc = r.record.migration_cpu
    return None if mc is None else getattr(mc, name)


def encryption_by_mode(runs: list[ModeRun]) -> dict[str, str]:
    """Each mode's WAN encryption, from its runs' records ("a / b" if they differ)."""
    out: dict[str, list[str]] = {}
    for r in runs:
        seen = out.setdefault(r.label, [])
        enc = r.record.wan_encryption or "not recorded"
        if enc not in seen:
            seen.append(enc)
    return {m: " / ".join(v) for m, v in out.items()}


def ratio(value: float | None, stock: float | None) -> str:
    if value is None or not stock:
        return "–"
    return f"{value / stock:.2f}×"


def _num(value: float | None, fmt: str = "{:.1f}") -> str:
    return "–" if value is None else fmt.format(value)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f} %"


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:+.0f} %"


def prediction_table(table: list[ModeRow]) -> list[str]:
    """Each mode's prediction (made before each run) against the run, and the runs' time
    against T_min, the physical limit."""
    lines = [
        "| mode | WAN (MB) | predicted (MB) | WAN error | total time (s) | predicted (s) "
        "| time error | T_min (s) | ×T_min |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table:
        lines.append(
            f"| {r.label} | {_num(r.wan_bytes and r.wan_bytes / 1e6)} "
            f"| {_num(r.predicted_wan_bytes and r.predicted_wan_bytes / 1e6)} "
            f"| {_signed(r.wan_error)} | {_num(r.total_s)} | {_num(r.predicted_total_s)} "
            f"| {_signed(r.time_error)} | {_num(r.t_min_s)} "
            f"| {_num(r.x_t_min, '{:.2f}×')} |")
    return lines


def stock_of(table: list[ModeRow], row: ModeRow) -> ModeRow | None:
    """The stock row a row's ratios are taken to: stock of the same variant (encrypted
    against encrypted, clear against clear)."""
    return next((r for r in table if r.mode == str(Mode.STOCK) and r.variant == row.variant),
                None)


def encryption_cost_table(table: list[ModeRow]) -> list[str]:
    """Each mode encrypted and in clear side by side, measured in the same run, and the
    ratio encrypted / clear ("–" where either is missing)."""
    figures: list[tuple[str, Callable[[ModeRow], float | None], str]] = [
        ("total time (s)", lambda r: r.total_s, "{:.1f}"),
        ("downtime (ms)", lambda r: r.downtime_ms, "{:.0f}"),
        ("source CPU (s/GB)", lambda r: r.send_cpu_s_per_gb, "{:.2f}"),
        ("destination CPU (s/GB)", lambda r: r.recv_cpu_s_per_gb, "{:.2f}"),
    ]
    head = "| mode | " + " | ".join(f"{name}: encrypted | clear | ratio"
                                    for name, _, _ in figures) + " |"
    lines = [head, "|---|" + "---:|---:|---:|" * len(figures)]
    for mode in dict.fromkeys(r.mode for r in table if r.variant):
        enc = next((r for r in table if r.mode == mode and r.variant == ENCRYPTED), None)
        clear = next((r for r in table if r.mode == mode and r.variant == CLEAR), None)
        cells = []
        for _, get, fmt in figures:
            e = get(enc) if enc else None
            c = get(clear) if clear else None
            cells.append(f"{_num(e, fmt)} | {_num(c, fmt)} | {ratio(e, c)}")
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    return lines


def cpu_per_run(runs: list[ModeRun]) -> list[str]:
    """Each run's CPU: what was counted at each side, in seconds."""
    lines = ["| round | mode | source CPU (s) | destination CPU (s) | guest memory moved (MB) "
             "| counted | not measured |", "|---:|---|---:|---:|---:|---|---|"]
    for r in runs:
        mc = r.record.migration_cpu
        if mc is None:
            lines.append(f"| {r.round} | {r.label} | – | – | – | not measured | |")
            continue
        counted = "; ".join(
            f"{'src' if p.side == 'source' else 'dst'} {p.process} {p.cpu_s:.2f}"
            + (f" ({', '.join(f'{n} {v:.2f}' for n, v in p.threads.items())})"
               if p.threads else "") for p in mc.processes)
        lines.append(f"| {r.round} | {r.label} | {_num(mc.send_s, '{:.2f}')} "
                     f"| {_num(mc.recv_s, '{:.2f}')} | {mc.guest_memory_bytes / 1e6:.0f} "
                     f"| {counted.replace('|', '/')} "
                     f"| {'; '.join(mc.missing).replace('|', '/')} |")
    return lines


def markdown(options: BenchOptions, runs: list[ModeRun], command: str, started: str) -> str:
    table = rows(runs)
    s = options.scenario
    lines = [
        f"# pcteleport bench: {s.name}, WAN {options.wan_profile}",
        "",
        f"Started {started}; `{command}`; {options.repeat} round(s), modes interleaved"
        + ("; each mode encrypted and in clear (`--encryption-cost`), the pair's order "
           "swapped every other round" if options.encryption_cost else "")
        + f"; {options.before_s:g} s measured before and {options.after_s:g} s after each "
        "migration; "
        f"downtime limit {options.max_downtime_ms or 'QEMU default'} ms"
        + (", auto-converge for every mode" if options.auto_converge else "")
        + ("; **no encryption on the WAN** (`--insecure`)." if options.insecure else "."),
        "",
        "| mode | migrated/runs (ok) | total time (s) | vs stock | WAN (MB) | vs stock "
        "| disks (MB) | memory (MB) "
        "| downtime (ms) | vs stock | pages teleported | reads during | read dip after "
        "| reads recovered (s) | reads degraded (s) "
        f"| {s.unit or 'workload'} during | workload recovered (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table:
        stock = stock_of(table, r)

        def vs_stock(value: float | None, get: Callable[[ModeRow], float | None],
                     stock: ModeRow | None = stock) -> str:
            # Without a stock run there is nothing to take a ratio to ("–", not 1.00×).
            return ratio(value, get(stock)) if stock is not None else "–"

        never = f" ({r.read_never_recovered} never)" if r.read_never_recovered else ""
        lines.append(
            f"| {r.label} | {r.migrated}/{r.runs} ({r.ok}) | {_num(r.total_s)} "
            f"| {vs_stock(r.total_s, lambda s: s.total_s)} "
            f"| {_num(r.wan_bytes and r.wan_bytes / 1e6)} "
            f"| {vs_stock(r.wan_bytes, lambda s: s.wan_bytes)} "
            f"| {_num(r.disk_wan_bytes and r.disk_wan_bytes / 1e6)} "
            f"| {_num(r.memory_wan_bytes and r.memory_wan_bytes / 1e6)} "
            f"| {_num(r.downtime_ms, '{:.0f}')} "
            f"| {vs_stock(r.downtime_ms, lambda s: s.downtime_ms)} "
            f"| {_num(r.teleported_pages, '{:,.0f}')} | {_pct(r.read_during)} "
            f"| {_pct(r.read_dip)} | {_num(r.read_recovered_s)}{never} "
            f"| {_num(r.read_degraded_s, '{:.0f}')} "
            f"| {_pct(r.work_during) if s.has_workload else '–'} "
            f"| {_num(r.work_recovered_s) if s.has_workload else '–'} |")
    lines += [
        "",
        "Means over the rounds whose VM reached the destination (*migrated*; *ok*: runs the "
        "migration service also reported as successful, see the errors below). *reads*: "
        "file-read throughput in 4 KiB blocks/s inside the guest "
        "(scenarios/guest/reader.py); *during*: mean while migrating, *dip*: lowest second within "
        "10 s after the VM resumed, both as a share of the median before the migration; "
        "*recovered*: seconds from the resume until 3 consecutive seconds at ≥ 80 % of that "
        "median; *degraded*: seconds below 80 % from the migration's start to the end of "
        "the window (a cache dropped before the migration degrades reads while it runs). "
        "WAN bytes are counted on the WAN link itself; *disks*: libvirt's storage migration of "
        "the disks' writable layers (NBD), *memory*: the migration stream, split as "
        "console/sites/libvirt/migration/stats.py `split_wan` says (the memory stream counted "
        "where it is written, the disks the rest).",
        "",
        *(encryption_section(table, runs) if options.encryption_cost else []),
        "## Predicted before each run, and the physical limit",
        "",
        *prediction_table(table),
        "",
        "Predicted by pcteleport.predict from what the run's record keeps, measured while the "
        "workload ran just before it (a fresh composition and map, a zstd sample of guest RAM, "
        "QEMU's dirty rate, the overlays, the WAN's goodput and RTT). *error*: mean of "
        "(predicted − measured) / measured. *T_min*: the bytes that must cross (non-zero pages "
        "no map names, compressed as the sample says; zero pages' records; the overlays; the "
        "dirtying meanwhile) over the goodput, plus 3 RTTs; *×T_min*: the run's total time "
        "over it.",
        "WAN encryption (as the records say): " + "; ".join(
            f"{m}: {enc}" for m, enc in encryption_by_mode(runs).items()) + ".",
        "",
        "## Every run",
        "",
        "| round | mode | result | VM then at | total time (s) | WAN (MB) | disks (MB) "
        "| memory (MB) | downtime (ms) | pages teleported per disk "
        "| writes checked (lost) | reads before (blocks/s) | reads recovered (s) "
        "| predicted (MB) | predicted (s) | T_min (s) | error |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in runs:
        rec = r.record
        rs = r.read_summary
        lines.append(
            f"| {r.round} | {r.label} | {rec.result} | {r.site_after} | {_num(rec.total_s)} "
            f"| {rec.wan_bytes / 1e6:.1f} | {rec.disk_wan_bytes / 1e6:.1f} "
            f"| {rec.memory_wan_bytes / 1e6:.1f} | {_num(rec.downtime_ms, '{:.0f}')} "
            f"| {', '.join(f'{d.target} {d.pages_teleported:,}' for d in rec.disks) or '–'} "
            f"| {_writes(rec)} "
            f"| {_num(rs.baseline if rs else None, '{:,.0f}')} "
            f"| {_num(rs.recovered_s if rs else None)} "
            f"| {_num(rec.prediction.wan_bytes / 1e6 if rec.prediction else None)} "
            f"| {_num(rec.prediction.total_s if rec.prediction else None)} "
            f"| {_num(rec.t_min_s)} | {(rec.error or '').replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def encryption_section(table: list[ModeRow], runs: list[ModeRun]) -> list[str]:
    return [
        "## The cost of encryption",
        "",
        *encryption_cost_table(table),
        "",
        "Each mode encrypted (teleport: the relays' AES-256-GCM frames and disk tunnel; the "
        "others: libvirt's TLS) and in clear (`--insecure`), in the same run, one right after "
        "the other. *ratio*: encrypted / clear, of the means above (measured once on a shared "
        "machine: a guide, not a bound). *CPU*: what the processes carrying the migration used "
        "at each side, per GB of guest memory moved: QEMU's migration threads, and at the "
        "destination its main thread, where the incoming stream is loaded (never its vCPUs, nor "
        "the source's main thread: the guest's device I/O), and for teleport its relays and "
        "tunnel ends from when they listened "
        "(console/sites/libvirt/proc_cpu.py).",
        "",
        *cpu_per_run(runs),
        "",
    ]


def _writes(rec: MigrationRecord) -> str:
    """The write check at the destination: journaled writes checked, and lost (must be 0)."""
    wc = rec.write_check
    if wc is None:
        return "–"
    return f"{wc.checked:,} ({wc.failed})" + ("" if wc.complete else " partial")


def bars_svg(options: BenchOptions, runs: list[ModeRun]) -> str:
    table = rows(runs)

    def panel(name: str, get: Callable[[ModeRow], float | None]) -> tuple[str, list[svg.Bar]]:
        def base(r: ModeRow) -> float | None:
            stock = stock_of(table, r)
            return get(stock) if stock else None

        return name, [svg.Bar(r.label, get(r), ratio(get(r), base(r)) if base(r) else "")
                      for r in table]

    return svg.bar_panels(
        f"{options.scenario.name}, WAN {options.wan_profile}: means of {options.repeat} round(s)"
        " (under each bar: its ratio to stock)",
        [panel("total time (s)", lambda r: r.total_s),
         panel("WAN (MB)", lambda r: r.wan_bytes / 1e6 if r.wan_bytes else None),
         panel("downtime (ms)", lambda r: r.downtime_ms)])


def timeline_svg(title: str, unit: str, runs: list[ModeRun], workload: bool) -> str:
    series = []
    for r in runs:
        summary = r.workload_summary if workload else r.read_summary
        pts = r.workload if workload else r.reads
        note = ""
        if not r.migrated:
            note = f"round {r.round}: did not migrate ({r.record.error or 'failed'})"[:110]
        elif summary and summary.baseline:
            rec = summary.recovered_s
            note = (f"round {r.round}: dip {100 * (summary.dip or 0):.0f} %, "
                    + (f"recovered after {rec:.1f} s" if rec is not None else "not recovered"))
        series.append(svg.Series(r.label, [(p.t, p.value) for p in pts], r.resume_t,
                                 summary.baseline if summary else None, note,
                                 r.returned_t if r.migrated else None))
    return svg.stacked_timelines(title, unit, series)


def machine() -> dict[str, Any]:
    def version(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
            return out.splitlines()[0].strip() if out else ""
        except (OSError, subprocess.SubprocessError):
            return ""

    import libvirt

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text()
                .splitlines() if ln.startswith("model name")), "")
    mem = Path("/proc/meminfo").read_text().split()[1]
    return {"host": platform.node(), "kernel": platform.release(), "cpu": cpu,
            "cores": len([ln for ln in Path("/proc/cpuinfo").read_text().splitlines()
                          if ln.startswith("processor")]),
            "memory_gib": round(int(mem) / 2**20, 1),
            "python": platform.python_version(), "libvirt": libvirt.getVersion(),
            "qemu": version(["qemu-system-x86_64", "--version"])}


def write(out_root: Path, options: BenchOptions, runs: list[ModeRun], command: str,
          returns: list[Any] | None = None, started_at: float | None = None) -> Path:
    """results/<date>/<scenario>-<wan>-<time>.{json,md} and -bars/-reads/-workload .svg, named
    by the run's start."""
    now = time.gmtime(started_at)
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", now)
    folder = out_root / time.strftime("%Y-%m-%d", now)
    folder.mkdir(parents=True, exist_ok=True)
    clear = ("-insecure" if options.insecure else
             "-encryption-cost" if options.encryption_cost else "")
    stem = folder / (f"{options.scenario.name}-{options.wan_profile}{clear}-"
                     f"{time.strftime('%H%M%S', now)}")
    from pcteleport.records import to_dict

    data = {"scenario": options.scenario.name, "wan": options.wan_profile, "command": command,
            "started": started, "repeat": options.repeat,
            "before_s": options.before_s, "after_s": options.after_s,
            "max_downtime_ms": options.max_downtime_ms, "auto_converge": options.auto_converge,
            "insecure": options.insecure, "encryption_cost": options.encryption_cost,
            "modes": [str(m) for m in options.modes], "machine": machine(),
            "table": [r.__dict__ for r in rows(runs)], "runs": describe(runs),
            "returns": [to_dict(r) for r in returns or []]}
    Path(f"{stem}.json").write_text(json.dumps(data, indent=1, allow_nan=False) + "\n")
    return _render(str(stem), options, runs, command, started)


def _render(stem: str, options: BenchOptions, runs: list[ModeRun], command: str,
            started: str) -> Path:
    s = options.scenario
    Path(f"{stem}.md").write_text(markdown(options, runs, command, started))
    Path(f"{stem}-bars.svg").write_text(bars_svg(options, runs))
    Path(f"{stem}-reads.svg").write_text(timeline_svg(
        f"{s.name}: file-read throughput around the migration (WAN {options.wan_profile})",
        "4 KiB blocks/s", runs, workload=False))
    if s.has_workload:
        Path(f"{stem}-workload.svg").write_text(timeline_svg(
            f"{s.name}: {s.unit} around the migration (WAN {options.wan_profile})", s.unit,
            runs, workload=True))
    return Path(f"{stem}.md")


def read_json(path: Path, keys: frozenset[str] = frozenset({"scenario", "modes", "runs"})
              ) -> dict[str, Any]:
    """A bench run's JSON, with at least `keys`."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise PcteleportError(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise PcteleportError(f"{path} is not a bench run's JSON ({exc})") from None
    if not isinstance(data, dict) or not keys <= data.keys():
        raise PcteleportError(f"{path} is not a bench run's JSON (no {', '.join(sorted(keys))}):"
                              " give the .json that `pcteleport bench` wrote")
    return data


def load_runs(path: Path) -> tuple[BenchOptions, list[ModeRun], str, str]:
    """A run back from its JSON (options, runs, command, start), to render it again."""
    from pcteleport.bench.scenario import load
    from pcteleport.bench.timeline import Point, summarise
    from pcteleport.records import MigrationRecord, from_dict

    data = read_json(path)
    options = BenchOptions(load(data["scenario"]), [Mode(m) for m in data["modes"]],
                           data["wan"], repeat=data["repeat"], before_s=data["before_s"],
                           after_s=data["after_s"], max_downtime_ms=data.get("max_downtime_ms"),
                           auto_converge=bool(data.get("auto_converge", False)),
                           insecure=bool(data.get("insecure", False)),
                           encryption_cost=bool(data.get("encryption_cost", False)))
    runs = []
    for r in data["runs"]:
        record = from_dict(MigrationRecord, r["record"])
        run = ModeRun(Mode(r["mode"]), r["round"], record,
                      [Point(t, v) for t, v in r["reads"]],
                      [Point(t, v) for t, v in r["workload"]],
                      latency_p95_ms=[Point(t, v) for t, v in r.get("latency_p95_ms", [])],
                      guest_errors=r.get("guest_errors", ""), site_after=r.get("site_after", ""),
                      returned_t=r.get("returned_t", 0.0), variant=r.get("variant", ""))
        run.read_summary = summarise(run.reads, run.resume_t)
        if run.workload:
            run.workload_summary = summarise(run.workload, run.resume_t)
        runs.append(run)
    started = data.get("started") or data.get("written", "")
    return options, runs, data.get("command", ""), started


def rerender(path: Path) -> Path:
    """Write the table and figures of a run's JSON again, next to it, with this code."""
    options, runs, command, started = load_runs(path)
    return _render(str(path)[: -len(".json")], options, runs, command, started)
