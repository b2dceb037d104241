"""`pcteleport bench soak`: one VM migrated back and forth between two sites, run after run,
until N runs are done or one fails — the proof that migrations do not lose a VM or its memory.

Each run is a real migration through the service (libvirt, relays, the guest agent), in the
modes given, taking turns. With --compare-ram the destination stays paused until its RAM was
compared page by page with the source's at the switch-over (sites/ramcheck.py): 0 differing
pages is the proof that every page arrived, teleported or sent. After every run the service
has checked the destination guest (domain state, serial console for oops/panic, the agent, its
page cache against its disk); on a lab VM the soak also runs `memwriter.py` in the guest, which
finds any page of its own that came back stale.

The first failure stops the soak; its record (kept in the record store, with any differing
pages' bytes beside it) is the evidence. Results: results/<date>/soak-<vm>-<time>.{json,md}.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pcteleport.backend import MigrationRequest
from pcteleport.errors import PcteleportError
from pcteleport.records import LogLine, MigrationRecord, Mode, Result
from pcteleport.sites.libvirt.backend import LibvirtBackend

Say = Callable[[str], None]
WRITER = "memwriter"


@dataclass
class SoakRun:
    index: int
    mode: str
    from_site: str
    to_site: str
    result: str
    error: str = ""
    total_s: float | None = None
    downtime_ms: float | None = None
    wan_bytes: int = 0
    pages_teleported: int = 0
    pages_compared: int | None = None
    pages_differing: int | None = None
    crashed: bool = False
    stale_pages: int = 0  # memwriter's stale stamps found after this run
    runs_at: str = ""
    run_id: str = ""

    @property
    def failed(self) -> bool:
        return (self.result != str(Result.OK) or bool(self.pages_differing) or self.crashed
                or self.stale_pages > 0)


@dataclass
class SoakOptions:
    vm: str
    modes: list[Mode]
    runs: int
    compare_ram: bool = False
    wan_profile: str | None = "fast"  # lab only; None leaves the WAN as it is
    force: bool = False
    workload: bool = True
    writer_mib: int = 64
    writer_rate: float = 4.0
    hot_mib: int = 8  # written over and over at C speed: what made QEMU 7.2 lose pages


@dataclass
class ModeSummary:
    mode: str
    runs: int = 0
    ok: int = 0
    pages_compared: int = 0
    pages_differing: int = 0
    guests_crashed: int = 0
    stale_pages: int = 0
    failures: int = 0
    total_s: list[float] = field(default_factory=list)


def summarise(runs: list[SoakRun]) -> list[ModeSummary]:
    out: dict[str, ModeSummary] = {}
    for r in runs:
        m = out.setdefault(r.mode, ModeSummary(r.mode))
        m.runs += 1
        m.ok += not r.failed
        m.pages_compared += r.pages_compared or 0
        m.pages_differing += r.pages_differing or 0
        m.guests_crashed += r.crashed
        m.stale_pages += r.stale_pages
        m.failures += r.failed
        if r.total_s is not None:
            m.total_s.append(r.total_s)
    return list(out.values())


def from_record(index: int, rec: MigrationRecord, stale: int) -> SoakRun:
    rc = rec.ram_check
    return SoakRun(
        index=index, mode=str(rec.mode), from_site=rec.from_site, to_site=rec.to_site,
        result=str(rec.result), error=rec.error or "", total_s=rec.total_s,
        downtime_ms=rec.downtime_ms, wan_bytes=rec.wan_bytes,
        pages_teleported=rec.pages.teleported,
        pages_compared=rc.pages if rc else None, pages_differing=rc.differing if rc else None,
        crashed=bool(rec.guest_console), stale_pages=stale, runs_at=rec.runs_at,
        run_id=rec.run_id)


class Soak:
    def __init__(self, options: SoakOptions, backend: LibvirtBackend | None = None,
                 say: Say | None = None) -> None:
        from pcteleport.headless import open_backend

        self.o = options
        self.backend = backend or open_backend()
        self.say = say or (lambda text: (sys.stderr.write(f"soak: {text}\n"), sys.stderr.flush()))
        self.runs: list[SoakRun] = []
        self.started = time.time()
        self._guest: Any = None  # LabGuest, when the VM is a lab VM
        self._writer_pid: int | None = None

    # -- where the VM is --------------------------------------------------------------------

    def where(self) -> str:
        for site in self.backend.sites():
            if site.error:
                continue
            for vm in self.backend.vms(site.name):
                if self.o.vm in (vm.name, vm.uuid) and str(vm.state) == "running":
                    return site.name
        raise PcteleportError(f"VM {self.o.vm} runs at no site")

    def other(self, site: str) -> str:
        names = [s.name for s in self.backend.sites()]
        others = [n for n in names if n != site]
        if not others:
            raise PcteleportError(f"only one site ({site}) is configured: a soak needs two")
        return others[0]

    # -- the guest's own check --------------------------------------------------------------

    def _on_lab(self) -> bool:
        return all(s.lab.get("host_dir") for s in self.backend.cfg.sites)

    def _lab_guest(self) -> Any:
        from pcteleport.bench.guest import LabGuest

        return LabGuest(self.backend.cfg, self.o.vm) if self._on_lab() else None

    def start_workload(self, site: str) -> None:
        if not self.o.workload:
            return
        self._guest = self._lab_guest()
        if self._guest is None:
            self.say("not a lab VM: no memwriter in the guest (the RAM check still runs)")
            return
        self._guest.install_programs(site)
        # one left by a soak cut short (busybox has no pkill)
        self._guest.run(site, "for p in /proc/[0-9]*; do grep -q memwriter.py $p/cmdline "
                              "2>/dev/null && kill ${p#/proc/}; done; true")
        self._writer_pid = self._guest.start(
            site, WRITER, ["memwriter.py", "--mib", str(self.o.writer_mib),
                           "--rate", str(self.o.writer_rate), "--hot-mib", str(self.o.hot_mib)])
        self._guest.wait_rows(site, [WRITER], rows=1)
        self.say(f"memwriter in the guest: {self.o.writer_mib} MiB rewritten at "
                 f"{self.o.writer_rate:g} MiB/s, each page checked before it is rewritten; "
                 f"{self.o.hot_mib} MiB written over and over between")

    def stale_pages(self, site: str) -> int:
        """Stale stamps memwriter reported so far (it keeps running across migrations)."""
        if self._guest is None or self._writer_pid is None:
            return 0
        text = self._guest.run(site, f"cat /tmp/pct-bench/{WRITER}.err 2>/dev/null | "
                                     f"grep -c '^stale page'; kill -0 {self._writer_pid} "
                                     "&& echo alive || echo dead")
        words = text.split()
        if words[-1:] == ["dead"]:
            raise PcteleportError(f"memwriter in {self.o.vm} at {site} is gone: "
                                  f"{self._guest.errors(site, WRITER)[-300:]}")
        return int(words[0]) if words and words[0].isdigit() else 0

    def stop_workload(self, site: str) -> None:
        if self._guest is not None and self._writer_pid is not None:
            self._guest.stop(site, [self._writer_pid])

    # -- the soak -----------------------------------------------------------------------------

    def migrate(self, mode: Mode, to: str) -> MigrationRecord:
        def on_event(event: object) -> None:
            if isinstance(event, LogLine):
                self.say(f"  {event.text}")

        request = MigrationRequest(self.o.vm, to, mode, compare_ram=self.o.compare_ram,
                                   force=self.o.force)
        return self.backend.migrate(request, on_event)

    def run(self, checkpoint: Callable[[list[SoakRun]], None] | None = None) -> list[SoakRun]:
        from pcteleport.bench.runner import refuse_corrupting_engine

        site = self.where()
        refuse_corrupting_engine(self.backend, self.o.vm, self.o.force, self.say)
        if self.o.wan_profile:
            self._set_wan(self.o.wan_profile)
        stale_before = 0
        try:
            self.start_workload(site)
            for i in range(self.o.runs):
                mode = self.o.modes[i % len(self.o.modes)]
                to = self.other(site)
                self.say(f"run {i + 1}/{self.o.runs}: {mode} {site} -> {to}")
                rec = self.migrate(mode, to)
                site = rec.runs_at or site
                stale = 0
                if rec.runs_at and rec.runs_at != "nowhere":
                    stale = self.stale_pages(rec.runs_at) - stale_before
                    stale_before += stale
                run = from_record(i + 1, rec, stale)
                self.runs.append(run)
                self.say(f"run {i + 1}: {run.result}, {run.total_s} s, RAM "
                         f"{run.pages_differing if run.pages_differing is not None else '-'} "
                         f"pages differ, memwriter {stale} stale, VM at {run.runs_at or '?'}")
                if checkpoint:
                    checkpoint(self.runs)
                if run.failed:
                    self.say(f"stopping at the first failure (run {i + 1}): "
                             f"{run.error or 'see the record ' + run.run_id}")
                    break
                if run.runs_at in ("", "nowhere"):
                    break
        finally:
            if site and site != "nowhere":
                try:
                    self.stop_workload(site)
                except PcteleportError as exc:
                    self.say(f"could not stop memwriter: {exc}")
            self.backend.close()
        return self.runs

    def _set_wan(self, profile: str) -> None:
        from pcteleport.lab import wan
        from pcteleport.lab.paths import LabPaths

        if self._on_lab():  # real sites: the WAN is what it is
            wan.use_profile(LabPaths.default(), profile)
            self.backend.forget_wan_measurements(profile)


# -- results ------------------------------------------------------------------------------


def table(runs: list[SoakRun]) -> str:
    lines = ["| mode | runs | ok | pages compared | pages differing | guests crashed | "
             "memwriter stale pages | failures | median time |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in summarise(runs):
        med = sorted(m.total_s)[len(m.total_s) // 2] if m.total_s else None
        lines.append(f"| {m.mode} | {m.runs} | {m.ok} | {m.pages_compared:,} | "
                     f"{m.pages_differing} | {m.guests_crashed} | {m.stale_pages} | "
                     f"{m.failures} | {'-' if med is None else f'{med:.1f} s'} |")
    return "\n".join(lines)


def write(out_root: Path, options: SoakOptions, runs: list[SoakRun], command: str,
          started_at: float) -> Path:
    from pcteleport.bench.report import machine

    now = time.gmtime(started_at)
    folder = out_root / time.strftime("%Y-%m-%d", now)
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"soak-{options.vm}-{time.strftime('%H%M%S', now)}"
    data = {"vm": options.vm, "command": command,
            "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", now),
            "options": {**asdict(options), "modes": [str(m) for m in options.modes]},
            "machine": machine(), "summary": [asdict(m) for m in summarise(runs)],
            "runs": [asdict(r) for r in runs]}
    Path(f"{stem}.json").write_text(json.dumps(data, indent=1) + "\n")
    failed = next((r for r in runs if r.failed), None)
    md = [f"# Soak of {options.vm}: {len(runs)} migrations", "",
          f"`{command}`, started {data['started']}, QEMU: {data['machine']['qemu']}", "",
          table(runs), ""]
    if failed:
        md += [f"Stopped at run {failed.index} ({failed.mode} {failed.from_site} -> "
               f"{failed.to_site}): {failed.error or 'see record ' + failed.run_id}", ""]
    Path(f"{stem}.md").write_text("\n".join(md))
    return Path(f"{stem}.md")


def main(vm: str, modes: str, runs: int, compare_ram: bool, wan_profile: str | None,
         out: str, command: str, force: bool = False, workload: bool = True,
         writer: str = "64:4", hot_mib: int = 8) -> int:
    try:
        mode_list = [Mode(m.strip()) for m in modes.split(",") if m.strip()]
    except ValueError:
        raise PcteleportError(f"--modes {modes!r}: use stock, drop-cache, zstd, teleport"
                              ) from None
    if not mode_list:
        raise PcteleportError("--modes names no mode")
    if runs < 1:
        raise PcteleportError("--runs must be at least 1")
    try:
        mib_text, rate_text = writer.split(":")
        writer_mib, writer_rate = int(mib_text), float(rate_text)
        if writer_mib < 1 or not 0 < writer_rate < 1e6:
            raise ValueError
    except ValueError:
        raise PcteleportError(f"--writer {writer!r}: give MIB:RATE, e.g. 64:4 (64 MiB "
                              "rewritten at 4 MiB/s)") from None
    if hot_mib < 0:
        raise PcteleportError("--hot must be 0 (none) or more MiB")
    options = SoakOptions(vm, mode_list, runs, compare_ram, wan_profile, force, workload,
                          writer_mib, writer_rate, hot_mib)
    soak = Soak(options)

    def checkpoint(so_far: list[SoakRun]) -> None:
        write(Path(out), options, so_far, command, soak.started)

    done = soak.run(checkpoint)
    md = write(Path(out), options, done, command, soak.started)
    print(table(done))
    print(f"written: {md} (and .json)")
    return 1 if any(r.failed for r in done) or len(done) < runs else 0
