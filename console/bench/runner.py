"""`pcteleport bench`: every mode on the same VM and WAN in one run, interleaved.

For each round (--repeat) and each mode in INTERLEAVE order (with --encryption-cost, each mode
twice in a row: encrypted and in clear, the pair's order swapped every other round): bring the
VM home (a stock migration
back over the return WAN profile, not measured), re-warm its page cache, start the scenario's
workload and the file reader in the guest, wait, migrate to the other site with the mode, wait,
stop the programs and collect their per-second timelines."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import libvirt

from pcteleport.backend import MigrationRequest
from pcteleport.bench import guest as guest_mod
from pcteleport.bench.scenario import BenchScenario
from pcteleport.bench.timeline import Point, Summary, summarise, to_points
from pcteleport.errors import PcteleportError
from pcteleport.headless import open_backend
from pcteleport.lab import wan
from pcteleport.lab.paths import LabPaths
from pcteleport.records import (
    LogLine,
    MigrationRecord,
    Mode,
    PredictionInputs,
    Result,
    Throughput,
)
from pcteleport.sites.libvirt.backend import LibvirtBackend

INTERLEAVE = (Mode.STOCK, Mode.TELEPORT, Mode.ZSTD, Mode.DROP_CACHE)
HOME, AWAY = "tokyo", "osaka"
ENCRYPTED, CLEAR = "encrypted", "clear"  # an --encryption-cost run's two variants of a mode
Say = Callable[[str], None]


@dataclass
class BenchOptions:
    scenario: BenchScenario
    modes: list[Mode]
    wan_profile: str = "default"
    return_wan: str = "fast"
    repeat: int = 1
    before_s: float = 10.0
    after_s: float = 40.0
    warm_timeout_s: float = 900.0
    # QEMU's default downtime limit (300 ms) is below what a read-heavy guest's page-cache
    # bookkeeping re-dirties per round over 100 Mbit/s (measured: ~3,200 pages/s, rounds that
    # never converge), so every measured migration gets this limit, the same for every mode.
    max_downtime_ms: int | None = 1000
    migration_timeout_s: float = 900.0  # then the bench aborts it (the record says so)
    auto_converge: bool = False  # libvirt's auto-converge, for every mode alike
    force: bool = False  # run even on an engine known to corrupt the guest (engine.py)
    insecure: bool = False  # every mode in clear on the WAN: the cost of encryption, measured
    #: every mode encrypted and in clear in the same run, side by side, with the CPU of the
    #: processes carrying each migration (MigrationRequest.measure_cpu)
    encryption_cost: bool = False

    def variants(self, round_no: int) -> tuple[str, ...]:
        """The variants of each mode in round `round_no`: one ("") in a plain run; with
        --encryption-cost both, the first of the pair alternating, so a drift of the machine
        over the run (a cache warming, a neighbour starting) does not favour either."""
        if not self.encryption_cost:
            return ("",)
        pair = (ENCRYPTED, CLEAR)
        return pair if round_no % 2 else pair[::-1]


@dataclass
class ModeRun:
    mode: Mode
    round: int
    record: MigrationRecord
    reads: list[Point] = field(default_factory=list)
    workload: list[Point] = field(default_factory=list)
    read_summary: Summary | None = None
    workload_summary: Summary | None = None
    latency_p95_ms: list[Point] = field(default_factory=list)
    guest_errors: str = ""
    site_after: str = ""  # where the VM ran once the migration call returned
    returned_t: float = 0.0  # when the service returned (after its verification in the guest)
    variant: str = ""  # ENCRYPTED or CLEAR in an --encryption-cost run, else ""

    @property
    def label(self) -> str:
        """The mode as tables name it: "stock", or "stock clear" beside "stock encrypted"."""
        return f"{self.mode} {self.variant}" if self.variant else str(self.mode)

    @property
    def ok(self) -> bool:
        return self.record.result is Result.OK

    @property
    def migrated(self) -> bool:
        """The VM ran at the destination afterwards: its times and bytes mean something (a run
        can end "failed" after that, e.g. at the service's verification step)."""
        return bool(self.site_after) and self.site_after == self.record.to_site

    @property
    def resume_t(self) -> float:
        return self.record.total_s or 0.0


def ordered_modes(requested: list[Mode]) -> list[Mode]:
    unknown = [m for m in requested if m not in INTERLEAVE]
    if unknown:
        raise PcteleportError(f"unknown mode(s) {unknown}")
    return [m for m in INTERLEAVE if m in requested]


class Bench:
    def __init__(self, options: BenchOptions, say: Say | None = None,
                 backend: LibvirtBackend | None = None) -> None:
        self.o = options
        self.say = say or self._say
        self.backend = backend or open_backend()
        self.guest = guest_mod.LabGuest(self.backend.cfg, options.scenario.name)
        self.paths = LabPaths.default()
        self.returns: list[MigrationRecord] = []
        self.started = time.time()
        #: the operator asked to stop (Ctrl-C): the migration in flight is aborted, no more
        #: runs start and the VM stays where that run left it
        self.stopping = threading.Event()
        self._in_flight: str | None = None  # the VM of the migration under way, if one is
        self.stopped_where = ""  # once stopped: where the VM runs, in the operator's words

    def stop(self) -> bool:
        """Stop after the migration in flight, which is aborted (any thread; the SIGINT
        handler's first Ctrl-C). False when none is in flight: the caller interrupts at once."""
        self.stopping.set()
        vm = self._in_flight
        if vm is None:
            return False
        self.say(f"stopping: aborting the migration of {vm} (Ctrl-C again to stop waiting)")
        threading.Thread(target=self.backend.abort, args=(vm,), daemon=True).start()
        return True

    @staticmethod
    def _say(text: str) -> None:
        sys.stderr.write(f"bench: {text}\n")  # one write: lines come from several threads
        sys.stderr.flush()

    # -- lab plumbing -------------------------------------------------------------------------

    def where(self) -> str:
        for site in (HOME, AWAY):
            for vm in self.backend.vms(site):
                if vm.name == self.o.scenario.name and str(vm.state) == "running":
                    return site
        raise PcteleportError(f"VM {self.o.scenario.name} runs at no site: "
                              f"`pcteleport lab up --vms {self.o.scenario.name}`")

    def set_wan(self, profile: str) -> None:
        wan.use_profile(self.paths, profile)
        self.backend.forget_wan_measurements(profile)

    def predict_inputs(self, to: str) -> PredictionInputs | None:
        """Measured while the workload runs, as the dialog and `migrate` measure: the record
        keeps the prediction beside what the run measures (bench's error columns)."""
        try:
            inp = self.backend.prediction_inputs(self.o.scenario.name, to, None,
                                                 self.o.auto_converge)
        except PcteleportError as exc:
            self.say(f"no prediction: {exc}")
            return None
        if self.o.max_downtime_ms:  # set on the domain only just before the migration
            inp.max_downtime_ms = float(self.o.max_downtime_ms)
        for p in inp.problems:
            self.say(f"prediction: {p}")
        self.say(f"measured for the prediction in {inp.took_s:.1f} s")
        return inp

    def migrate(self, mode: Mode, to: str, inputs: PredictionInputs | None = None,
                insecure: bool | None = None, measure_cpu: bool = False) -> MigrationRecord:
        def on_event(event: object) -> None:
            if isinstance(event, LogLine):
                self.say(f"  {event.text}")

        vm = self.o.scenario.name
        if self.o.max_downtime_ms:
            src = HOME if to == AWAY else AWAY
            try:  # a QEMU migration parameter: it holds for the domain's next migration
                dom = self.backend.sites_rt[src].conn().lookupByName(vm)
                dom.migrateSetMaxDowntime(self.o.max_downtime_ms, 0)
            except (libvirt.libvirtError, PcteleportError) as exc:
                self.say(f"could not set the downtime limit of {vm} at {src}: {exc}")
        if self.stopping.is_set():
            raise PcteleportError("stopped by the operator before the migration started")
        timer = threading.Timer(self.o.migration_timeout_s, self._give_up, args=(vm,))
        timer.start()
        self._in_flight = vm
        try:
            request = MigrationRequest(vm, to, mode, auto_converge=self.o.auto_converge,
                                       force=self.o.force, prediction_inputs=inputs,
                                       insecure=self.o.insecure if insecure is None else insecure,
                                       measure_cpu=measure_cpu)
            return self.backend.migrate(request, on_event)
        finally:
            self._in_flight = None
            timer.cancel()

    def _give_up(self, vm: str) -> None:
        self.say(f"the migration of {vm} did not finish within {self.o.migration_timeout_s:.0f}"
                 " s: aborting it")
        self.backend.abort(vm)

    def bring_home(self) -> None:
        if self.where() == HOME:
            return
        self.say(f"bringing {self.o.scenario.name} back to {HOME} (stock, {self.o.return_wan} WAN)")
        self.set_wan(self.o.return_wan)
        try:
            rec = self.migrate(Mode.STOCK, HOME)
            self.returns.append(rec)
        finally:
            self.set_wan(self.o.wan_profile)
        if self.where() != HOME:
            raise PcteleportError(f"could not bring {self.o.scenario.name} back to {HOME}: "
                                  f"{rec.error}")

    # -- one measured migration ---------------------------------------------------------------

    def start_programs(self, site: str) -> list[int]:
        s = self.o.scenario
        pids = [self.guest.start(site, "reads", ["reader.py", *s.read_paths])]
        if s.has_workload:
            pids.append(self.guest.start(site, "workload", list(s.workload)))
        return pids

    def measure(self, mode: Mode, round_no: int, variant: str = "") -> ModeRun:
        s = self.o.scenario
        self.bring_home()
        self.guest.install_programs(HOME)
        if s.warm_command:
            t = time.monotonic()
            self.guest.run(HOME, s.warm_command, timeout=self.o.warm_timeout_s)
            self.say(f"page cache warmed in {time.monotonic() - t:.1f} s")
        pids = self.start_programs(HOME)
        self.guest.wait_rows(HOME, ["reads", "workload"] if s.has_workload else ["reads"])
        offset_before = self.guest.clock_offset(HOME)  # before the window, not in it
        t = time.monotonic()
        inputs = self.predict_inputs(AWAY)  # within the window before the migration
        time.sleep(max(0.0, self.o.before_s - (time.monotonic() - t)))
        t0 = time.time()
        self.say(f"round {round_no}: {mode} migration {HOME} -> {AWAY}"
                 + (f" ({variant})" if variant else ""))
        record = self.migrate(mode, AWAY, inputs, self.o.insecure or variant == CLEAR,
                              measure_cpu=self.o.encryption_cost)
        t_end = time.time()
        site = self.where()
        if not self.stopping.is_set():  # (stopped: the timelines so far are enough)
            time.sleep(max(0.0, self.o.after_s - (time.time() - t_end)))
        offset_after = self.guest.clock_offset(site)  # after the window: nothing in it but us
        self.guest.stop(site, pids)
        resume_host = t0 + (record.total_s or (t_end - t0))
        # The guest clock stood still while the VM was paused: rows from before the pause keep
        # the source's offset. The pause began about (lag it gained) before the resume.
        pause_host = resume_host - max(0.0, offset_after - offset_before)
        run = ModeRun(mode, round_no, record, site_after=site, returned_t=t_end - t0,
                      variant=variant)

        def points(name: str, key: str) -> list[Point]:
            rows = self.guest.rows(site, name)
            return to_points(rows, key, t0, offset_before, offset_after, pause_host)

        run.reads = points("reads", "blocks")
        run.read_summary = summarise(run.reads, run.resume_t)
        if s.has_workload:
            run.workload = points("workload", s.metric)
            run.workload_summary = summarise(run.workload, run.resume_t)
            run.latency_p95_ms = points("workload", "latency_ms_p95")
        run.guest_errors = "\n".join(
            e for e in (self.guest.errors(site, n) for n in ("reads", "workload")) if e)
        rs = run.read_summary
        if rs.baseline:
            after = rs.baseline * (rs.after or 0.0)
            record.throughput_after = Throughput(after, "blocks/s", rs.recovered_s)
            self.backend.store.save(record)  # measured after the service saved the record
        self.say(f"{run.label}: {record.result} in {record.total_s} s, WAN {record.wan_bytes} B, "
                 f"downtime {record.downtime_ms} ms; reads recovered after {rs.recovered_s} s")
        return run

    def run(self, checkpoint: Callable[[list[ModeRun]], object] | None = None) -> list[ModeRun]:
        """Every round and mode; `checkpoint` gets the runs so far after each one, so a long
        run that is stopped half way still leaves its measured migrations on disk."""
        modes = ordered_modes(self.o.modes)
        self.started = time.time()
        refuse_corrupting_engine(self.backend, self.o.scenario.name, self.o.force, self.say)
        self.set_wan(self.o.wan_profile)
        runs: list[ModeRun] = []
        try:
            for r in range(1, self.o.repeat + 1):
                for mode in modes:
                    for variant in self.o.variants(r):
                        if self.stopping.is_set():
                            return runs
                        runs.append(self.measure(mode, r, variant))
                        if checkpoint:
                            checkpoint(runs)
            if not self.stopping.is_set():
                self.bring_home()
        except PcteleportError:
            if not self.stopping.is_set():
                raise  # (stopped: a bring-home aborted, or a migration refused, is expected)
        finally:
            if self.stopping.is_set():
                self.stopped_where = self._where_words()
            self.backend.close()
        return runs

    def _where_words(self) -> str:
        vm = self.o.scenario.name
        try:
            return f"VM {vm} is running at {self.where()}"
        except PcteleportError as exc:
            return str(exc)


def refuse_corrupting_engine(backend: LibvirtBackend, vm: str, force: bool, say: Say) -> None:
    """Before anything starts: a VM whose engine is known to corrupt it on migration is
    refused (the one-line reason), or with `force` warned about once."""
    warning = backend.engine_warning(vm)
    if warning and not force:
        raise PcteleportError(f"{warning}; nothing was started (--force runs anyway)")
    if warning:
        say(f"warning: {warning} (forced)")


def describe(runs: list[ModeRun]) -> list[dict[str, Any]]:
    from pcteleport.records import to_dict

    return [{"mode": str(r.mode), "round": r.round, "record": to_dict(r.record),
             "reads": [[p.t, p.value] for p in r.reads],
             "workload": [[p.t, p.value] for p in r.workload],
             "latency_p95_ms": [[p.t, p.value] for p in r.latency_p95_ms],
             "read_summary": r.read_summary.as_dict() if r.read_summary else None,
             "workload_summary": r.workload_summary.as_dict() if r.workload_summary else None,
             "guest_errors": r.guest_errors, "site_after": r.site_after,
             "returned_t": r.returned_t, "variant": r.variant} for r in runs]


def main(scenario: str, modes: str, wan_profile: str, repeat: int, as_json: bool,
         out: str, before_s: float, after_s: float, return_wan: str, command: str,
         max_downtime_ms: int | None = 1000, auto_converge: bool | None = None,
         force: bool = False, insecure: bool = False, encryption_cost: bool = False) -> int:
    """`pcteleport bench`: run, write results/<date>/, print the table (or JSON paths)."""
    import json
    from pathlib import Path

    from pcteleport.bench import report
    from pcteleport.bench.scenario import load

    try:
        mode_list = [Mode(m.strip()) for m in modes.split(",") if m.strip()]
    except ValueError:
        raise PcteleportError(f"--modes {modes!r}: use stock, drop-cache, zstd, teleport"
                              ) from None
    if repeat < 1:
        raise PcteleportError("--repeat must be at least 1")
    if insecure and encryption_cost:
        raise PcteleportError("--encryption-cost runs every mode in clear as well as "
                              "encrypted: leave out --insecure")
    chosen = load(scenario)
    options = BenchOptions(chosen, mode_list, wan_profile, return_wan, repeat,
                           before_s, after_s, max_downtime_ms=max_downtime_ms or None,
                           auto_converge=(chosen.auto_converge if auto_converge is None
                                          else auto_converge), force=force,
                           insecure=insecure, encryption_cost=encryption_cost)
    bench = Bench(options)

    def checkpoint(so_far: list[ModeRun]) -> Path:
        return report.write(Path(out), options, so_far, command, bench.returns, bench.started)

    def on_sigint(_sig: int, _frame: object) -> None:
        if bench.stopping.is_set() or not bench.stop():
            raise KeyboardInterrupt  # nothing to abort, or the second Ctrl-C: stop waiting

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        runs = bench.run(checkpoint)
    except KeyboardInterrupt:  # between migrations, or a second Ctrl-C: runs so far are kept
        print(f"pcteleport: bench interrupted; {bench.stopped_where}", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)
    if bench.stopping.is_set():
        written = ""
        if runs:
            kept = checkpoint(runs)
            written = f"; the {len(runs)} migration(s) measured so far are in {kept}"
        print(f"pcteleport: bench stopped by the operator{written}; {bench.stopped_where}",
              file=sys.stderr)
        return 130
    md = report.write(Path(out), options, runs, command, bench.returns, bench.started)
    if as_json:
        stem = str(md)[:-3]
        print(json.dumps({"markdown": str(md), "json": stem + ".json",
                          "table": [r.__dict__ for r in report.rows(runs)]}))
    else:
        print(md.read_text())
        print(f"written: {md} (and .json, -bars.svg, -reads.svg next to it)")
    return 0 if all(r.ok for r in runs) else 1
