"""One live migration through libvirt, in any mode, with telemetry recorded as it happens.

Modes:
- stock: libvirt's live precopy, the stream straight over the WAN.
- drop-cache: the guest drops its clean page cache first (the paper's straw man), then stock.
- zstd: QEMU multifd with zstd compression (the strongest stock peer).
- teleport: the stream goes source QEMU -> `relay send` (source host) -> WAN -> `relay recv`
  (destination host) -> destination QEMU; the map comes from the guest agent when the
  migration starts.

The migration is client-managed (`migrate3` with both connections held here): libvirt starts
the destination QEMU with `-incoming`, the source QEMU connects to the URI we give. A failed
or aborted migration leaves the source VM running and the destination discarded (libvirt's
own cleanup), and the record says why. Afterwards the destination guest is checked (domain
state, its serial console for oops and panics, its agent) and the record says where the VM
really runs — a site, or nowhere — never a site assumed from how far the run got.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass

import libvirt
import libvirt_qemu

from pcteleport.backend import VERIFY_SAMPLE_PAGES
from pcteleport.errors import PcteleportError
from pcteleport.records import (
    Composition,
    LogLine,
    MigrationEvent,
    MigrationRecord,
    MigrationSample,
    Mode,
    PageCounts,
    Phase,
    PhaseMark,
    RecordBuilder,
    Result,
    WanLink,
)
from pcteleport.sites.guest_agent import AgentUnavailable, GuestAgent
from pcteleport.sites.libvirt import guest_health
from pcteleport.sites.libvirt.events import LifecycleEvent
from pcteleport.sites.libvirt.ramcheck import RamCheckError, RamProbe, compare_across
from pcteleport.sites.libvirt.relays import RelayFailure, RelayPair
from pcteleport.sites.libvirt.site_runtime import DomainDisk, SiteRuntime, WanMeter, domain_disks
from pcteleport.sites.libvirt.vm_lock import VmLock
from pcteleport.teleport.layout import RamLayout

LIBVIRT_MULTIFD_ZSTD = 9_004_000  # libvirt 9.4 passes compression=zstd to multifd itself
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
BASE_FLAGS = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PERSIST_DEST
              | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
ROOT_SERIAL = "pctroot"


class MigrationFailed(PcteleportError):
    pass


class Aborted(PcteleportError):
    pass


@dataclass
class Plan:
    """What a migration needs to know up front."""

    vm: str
    vm_uuid: str
    src: SiteRuntime
    dst: SiteRuntime
    mode: Mode
    bandwidth_cap: float | None  # bytes/s
    data_disk: str = ""  # path of the disk whose replica the destination has
    data_serial: str = ""
    wan: WanLink | None = None
    verify_pages: int = VERIFY_SAMPLE_PAGES  # 0: every cached page
    auto_converge: bool = False
    #: compare guest RAM page by page across the switch-over (the destination stays paused
    #: until it is compared; see ramcheck.py) — for soaks, it costs seconds per migration
    compare_ram: bool = False
    #: the VM's serial console file (the same path at every site), checked for crashes
    console_log: str = ""


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


class MigrationRun:
    """Runs one migration; `abort()` may be called from any thread."""

    def __init__(self, plan: Plan, on_event: Callable[[MigrationEvent], None],
                 agent_for: Callable[[SiteRuntime, str], GuestAgent],
                 composition: Composition | None = None) -> None:
        self.plan = plan
        self.on_event = on_event
        self.agent_for = agent_for
        self.run_id = uuid.uuid4().hex[:12]
        self.t0 = time.monotonic()
        self.record = MigrationRecord(
            run_id=self.run_id, vm=plan.vm, from_site=plan.src.name, to_site=plan.dst.name,
            mode=plan.mode, vm_uuid=plan.vm_uuid, bandwidth_cap_bytes_per_s=plan.bandwidth_cap,
            started_at=time.time(), wan=plan.wan, composition=composition,
        )
        self.builder = RecordBuilder(self.record)
        self._abort = threading.Event()
        self._abort_reason = ""
        self._phase: Phase | None = None
        self._relays: RelayPair | None = None
        self._domain: libvirt.virDomain | None = None
        self._migrated = False  # QEMU's migration completed: the VM now runs at the destination
        self._emit_lock = threading.Lock()
        self._iteration = 1
        self._ram_src: RamProbe | None = None
        self._lock: VmLock | None = None
        self._migrate_called = False  # from here on, an incoming VM at the destination is ours
        self._ram_problem = ""
        self._console_offset: int | None = None  # the destination console's size at the start

    # -- events ---------------------------------------------------------------------------

    def _t(self) -> float:
        return round(time.monotonic() - self.t0, 3)

    def _emit(self, event: MigrationEvent) -> None:
        with self._emit_lock:  # libvirt's event thread reports phases too
            self.builder.add(event)
        with contextlib.suppress(Exception):
            self.on_event(event)

    def phase(self, phase: Phase, iteration: int = 0, at: float | None = None) -> None:
        """Enter `phase` (now, or at monotonic time `at`); entering it again does nothing."""
        if phase == self._phase and phase != Phase.ITERATIVE:
            return
        if any(m.phase == phase for m in self.record.phases) and phase != Phase.ITERATIVE:
            return
        self._phase = phase
        t = round((at if at is not None else time.monotonic()) - self.t0, 3)
        self._emit(PhaseMark(phase, t, iteration))

    def _on_lifecycle(self, ev: LifecycleEvent) -> None:
        p = self.plan
        if ev.vm_uuid != p.vm_uuid:
            return
        if ev.site == p.src.name and ev.suspended_for_migration:
            self.phase(Phase.STOP_AND_COPY, self._iteration, at=ev.at)
        elif ev.site == p.dst.name and ev.resumed_after_migration:
            self.phase(Phase.RESUME, self._iteration, at=ev.at)

    def log(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self._emit(LogLine(self._t(), f"{stamp} {text}"))

    def abort(self, reason: str = "aborted by the operator") -> None:
        self._abort_reason = reason
        self._abort.set()
        dom = self._domain
        if dom is not None:
            # No job yet, or already over: then the run notices the flag instead.
            with contextlib.suppress(libvirt.libvirtError):
                dom.abortJob()
        if self._relays is not None:
            threading.Thread(target=self._relays.stop, daemon=True).start()

    def _check_abort(self) -> None:
        if self._abort.is_set():
            raise Aborted(self._abort_reason)

    # -- the run --------------------------------------------------------------------------

    def run(self) -> MigrationRecord:
        p = self.plan
        self.phase(Phase.PREPARE)
        self.log(f"starting migration of VM {p.vm} from {p.src.name} to {p.dst.name} "
                 f"(mode {p.mode})")
        wan_before = None
        try:
            dom = p.src.domain(p.vm_uuid or p.vm)
            self._domain = dom
            if dom.state()[0] != libvirt.VIR_DOMAIN_RUNNING:
                raise MigrationFailed(f"VM {p.vm} is not running at {p.src.name}")
            self._lock = VmLock(p.src, p.vm_uuid, p.vm)
            if p.dst.find_domain(p.vm) is not None:
                raise MigrationFailed(f"a VM named {p.vm} already exists at {p.dst.name}")
            self._check_abort()
            self._console_offset = guest_health.console_size(p.dst, p.console_log)
            params, flags = self._mode_setup(dom)
            self._check_abort()
            if p.compare_ram:
                flags |= libvirt.VIR_MIGRATE_PAUSED  # resumed once its RAM was compared
                self._ram_src = RamProbe(p.src, p.vm)
                held = _fmt_bytes(self._ram_src.ready["bytes"])
                self.log(f"RAM check: holding the source's RAM ({held}) to compare it with "
                         "the destination's at the switch-over")
            p.dst.conn()  # connect now, so the clock below starts with the migration itself
            wan_before = p.src.wan_tx_bytes()
            self._migrate(dom, params, flags)
            self._finish(wan_before)
        except Aborted as exc:
            self._fail(Result.ABORTED, str(exc), wan_before)
        except (PcteleportError, libvirt.libvirtError) as exc:
            msg = exc.get_error_message() if isinstance(exc, libvirt.libvirtError) else str(exc)
            if self._abort.is_set():
                self._fail(Result.ABORTED, self._abort_reason, wan_before)
            else:
                self._fail(Result.FAILED, msg, wan_before)
        finally:
            if self._relays is not None:
                self._relays.stop()
            if self._ram_src is not None:
                with contextlib.suppress(PcteleportError):
                    self._ram_src.close()
            if self._lock is not None:
                with contextlib.suppress(PcteleportError):
                    self._lock.release()
        return self.record

    def _mode_setup(self, dom: libvirt.virDomain) -> tuple[dict, int]:
        p = self.plan
        flags = BASE_FLAGS
        params: dict[str, object] = {}
        if p.auto_converge:
            flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
            self.log("auto-converge: QEMU slows the guest's vCPUs while it dirties memory "
                     "faster than the link carries it")
        if p.bandwidth_cap:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = max(1, int(p.bandwidth_cap / 2**20))
        if p.mode == Mode.DROP_CACHE:
            agent = self.agent_for(p.src, p.vm)
            before = agent.composition()
            agent.call("drop_caches", timeout=60)
            after = agent.composition()
            self.log(f"guest dropped its page cache: clean cache {_fmt_bytes(before.cache_clean)}"
                     f" -> {_fmt_bytes(after.cache_clean)}")
        if p.mode == Mode.ZSTD:
            flags |= libvirt.VIR_MIGRATE_PARALLEL
            if p.src.conn().getLibVersion() >= LIBVIRT_MULTIFD_ZSTD:
                params[libvirt.VIR_MIGRATE_PARAM_COMPRESSION] = "zstd"
            else:
                multifd_zstd_by_hand(dom, params)
                self.log("this libvirt cannot ask for multifd zstd: set on both QEMUs directly "
                         "(source by QMP, destination by -global)")
        if p.mode == Mode.TELEPORT:
            self._start_teleport()
            params[libvirt.VIR_MIGRATE_PARAM_URI] = f"tcp://127.0.0.1:{self._relays.qemu_port}"
            params[libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] = "127.0.0.1"
        else:
            if not p.dst.config.wan_addr:
                raise MigrationFailed(f"site {p.dst.name} has no wan_addr in the sites config")
            params[libvirt.VIR_MIGRATE_PARAM_URI] = f"tcp://{p.dst.config.wan_addr}"
            params[libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] = p.dst.config.wan_addr
        return params, flags

    def _start_teleport(self) -> None:
        """Relays up, the map on its way: it is taken from the guest while the relays start
        and libvirt prepares the destination, and handed to the send relay when it comes."""
        p = self.plan
        if not p.data_disk:
            raise MigrationFailed(
                f"VM {p.vm} has no data disk with a replica at {p.dst.name}: "
                "teleport needs one (migrate with stock instead)"
            )
        self.phase(Phase.MAP)
        agent = self.agent_for(p.src, p.vm)
        relays = self._relays = RelayPair(p.src, p.dst)
        started = threading.Event()

        def take_map() -> None:
            t = time.monotonic()
            try:
                text, header = agent.restorable_map(p.data_serial or p.data_disk)
            except Exception as exc:  # whatever it is, the run must hear of it
                relays.map_problem = f"teleport: no restorable map from the guest agent: {exc}"
                self.log(relays.map_problem)
                return
            started.wait()  # the send relay exists before its map goes to it
            relays.feed_map(text)
            pages = int(header.get("pages", 0))
            self.log(f"restorable map from the guest agent ({header.get('source', '?')}): "
                     f"{pages} pages ({_fmt_bytes(pages * 4096)}) of disk {p.data_serial}, "
                     f"taken in {time.monotonic() - t:.1f} s "
                     f"({header.get('elapsed-ms', '?')} ms of it in the guest's walk)")

        threading.Thread(target=take_map, daemon=True, name="teleport-map").start()
        try:
            relays.start(p.data_disk, p.data_disk)
        finally:
            started.set()
        if relays.map_problem:
            raise MigrationFailed(relays.map_problem)
        self.log(f"relays up: {p.src.name} 127.0.0.1:{relays.qemu_port} -> "
                 f"{p.dst.name} {p.dst.config.wan_addr}")

    def _migrate(self, dom: libvirt.virDomain, params: dict, flags: int) -> None:
        p = self.plan
        dconn = p.dst.conn()
        outcome: dict[str, object] = {}

        def perform() -> None:
            try:
                outcome["domain"] = dom.migrate3(dconn, params, flags)
            except libvirt.libvirtError as exc:
                outcome["error"] = exc

        worker = threading.Thread(target=perform, daemon=True, name="migrate3")
        for site in (p.src, p.dst):
            site.events.add(self._on_lifecycle)
        try:
            self.phase(Phase.ITERATIVE, 1)
            self._migrate_called = True
            worker.start()
            self._watch(dom, worker)
            worker.join()
        finally:
            for site in (p.src, p.dst):
                site.events.remove(self._on_lifecycle)
        self._migrated = "domain" in outcome
        if "error" in outcome:
            err = outcome["error"]
            assert isinstance(err, libvirt.libvirtError)
            relay_problem = self._relays.failure() if self._relays else None
            if self._abort.is_set():
                raise Aborted(self._abort_reason)
            if relay_problem:  # we aborted the job because a relay failed
                raise MigrationFailed(relay_problem)
            if err.get_error_code() == libvirt.VIR_ERR_OPERATION_ABORTED:
                raise Aborted("aborted through libvirt (pcteleport abort, or virsh domjobabort)")
            raise MigrationFailed(relay_problem or f"libvirt: {err.get_error_message()}")

    def _watch(self, dom: libvirt.virDomain, worker: threading.Thread) -> None:
        """One sample and one log line per second until libvirt's migrate call returns."""
        p = self.plan
        meter = p.src.wan_meter()
        try:
            self._sample_loop(dom, worker, meter)
        finally:
            if meter is not None:
                meter.close()

    def _sample_loop(self, dom: libvirt.virDomain, worker: threading.Thread,
                     meter: WanMeter | None) -> None:
        last_wan, last_t = (meter.latest, meter.latest_at) if meter is not None else (None, 0.0)
        start = time.monotonic()
        iteration = 1
        remaining_min: int | None = None
        tick = 0.5  # a first sample soon, then one a second on a steady clock
        while worker.is_alive():
            worker.join(max(0.0, start + tick - time.monotonic()))
            tick += 1.0
            if not worker.is_alive():
                break
            try:
                stats = dom.jobStats()  # (not dom.state(): it waits seconds for the job lock)
            except libvirt.libvirtError:
                continue  # the job just ended; the worker tells us how
            wan, wan_at = (meter.latest, meter.latest_at) if meter is not None else (None, 0.0)
            wan_rate = ((wan - last_wan) / (wan_at - last_t)
                        if wan is not None and last_wan is not None and wan_at > last_t
                        else 0.0)
            if wan is not None and wan_at > last_t:
                last_wan, last_t = wan, wan_at
            it = int(stats.get("memory_iteration", iteration) or iteration)
            if it > iteration and self._phase == Phase.ITERATIVE:
                iteration = self._iteration = it
                self.phase(Phase.ITERATIVE, iteration)
            sample = self._sample(stats, wan_rate)
            self._emit(sample)
            self._progress_line(sample, remaining_min)
            remaining_min = (sample.remaining_bytes if remaining_min is None
                             else min(remaining_min, sample.remaining_bytes))
            if self._relays is not None:
                problem = self._relays.failure()
                if problem:
                    self.log(problem)
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.abortJob()

    def _sample(self, stats: dict, wan_rate: float) -> MigrationSample:
        page_size = int(stats.get("memory_page_size", 4096) or 4096)
        pages = PageCounts(zero=int(stats.get("memory_constant", 0)),
                           sent=int(stats.get("memory_normal", 0)))
        if self._relays is not None and self._relays.send.latest:
            r = self._relays.send.latest
            pages = PageCounts(teleported=int(r.get("pages_teleported", 0)),
                               zero=int(r.get("pages_zero", 0)),
                               sent=int(r.get("pages_sent", 0)))
        expected = stats.get("downtime")
        return MigrationSample(
            t=self._t(),
            phase=self._phase,
            guest_rate_bytes_per_s=float(stats.get("memory_bps", 0) or 0),
            wan_rate_bytes_per_s=max(0.0, wan_rate),
            remaining_bytes=int(stats.get("memory_remaining", 0)),
            total_bytes=int(stats.get("memory_total", 0)),
            iteration=int(stats.get("memory_iteration", 0) or 0),
            dirty_rate_bytes_per_s=float(stats.get("memory_dirty_rate", 0) or 0) * page_size,
            pages=pages,
            expected_downtime_ms=float(expected) if expected is not None else None,
        )

    def _progress_line(self, s: MigrationSample, remaining_min: int | None) -> None:
        done = s.total_bytes - s.remaining_bytes
        pct = 100.0 * done / s.total_bytes if s.total_bytes else 0.0
        line = (f"migration active, transferred {_fmt_bytes(done)} of "
                f"{_fmt_bytes(s.total_bytes)} VM-state, {_fmt_bytes(s.guest_rate_bytes_per_s)}/s"
                f" (WAN {_fmt_bytes(s.wan_rate_bytes_per_s)}/s)")
        if s.pages.teleported:
            line += f", {s.pages.teleported} pages teleported"
        if remaining_min is not None and s.remaining_bytes > remaining_min:
            line += (f" - remaining grew to {_fmt_bytes(s.remaining_bytes)} "
                     f"(iteration {s.iteration}: the guest dirtied memory)")
        self.log(f"{line} [{pct:.0f}%]")

    def _finish(self, wan_before: int | None) -> None:
        p = self.plan
        if p.compare_ram:
            self._compare_ram()
        resumed_at = time.monotonic()
        self.phase(Phase.RESUME)  # unless libvirt's event marked it already
        if self._relays is not None:
            try:
                self._relays.wait_done(60)
            except RelayFailure as exc:
                # QEMU finished; a relay complaint afterwards is worth a line, not a failure.
                self.log(f"warning: {exc}")
        ddom = p.dst.domain(p.vm)
        completed: dict = {}
        for _ in range(10):  # libvirt fills the completed stats a moment after the job ends
            try:
                completed = ddom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
            except libvirt.libvirtError:
                completed = {}
            if completed.get("downtime"):
                break
            time.sleep(0.3)
        rec = self.record
        # Total migration time: from the request to the VM running at the destination (libvirt's
        # resume event). What follows (relays exiting, libvirt's completed stats, verification)
        # is bookkeeping the guest does not wait for.
        resume = next((m.t for m in rec.phases if m.phase == Phase.RESUME), None)
        rec.total_s = resume if resume is not None else round(time.monotonic() - self.t0, 3)
        if completed.get("downtime") is not None:
            rec.downtime_ms = float(completed["downtime"])
            if not any(m.phase == Phase.STOP_AND_COPY for m in rec.phases):
                # No lifecycle event came (no event loop): place it by the real downtime.
                resume = resume if resume is not None else resumed_at - self.t0
                mark = PhaseMark(Phase.STOP_AND_COPY, round(resume - rec.downtime_ms / 1000, 3),
                                 self._iteration)
                with self._emit_lock:
                    rec.phases.insert(len(rec.phases) - 1, mark)
        rec.guest_bytes = int(completed.get("memory_processed", 0) or 0)
        wan_after = p.src.wan_tx_bytes()
        if wan_before is not None and wan_after is not None:
            rec.wan_bytes = wan_after - wan_before
        if self._relays is not None and self._relays.send.event("summary"):
            s = self._relays.send.event("summary") or {}
            rec.pages = PageCounts(int(s.get("pages_teleported", 0)),
                                   int(s.get("pages_zero", 0)), int(s.get("pages_sent", 0)))
            rec.guest_bytes = rec.guest_bytes or int(s.get("guest_bytes", 0))
        elif completed:
            rec.pages = PageCounts(0, int(completed.get("memory_constant", 0)),
                                   int(completed.get("memory_normal", 0)))
        self._check_destination()
        if self._ram_problem:
            raise MigrationFailed(self._ram_problem)
        self._verify(ddom)
        self._check_destination()  # once more: a guest can die while it is being verified
        rec.runs_at = p.dst.name
        rec.result = Result.OK
        self.phase(Phase.DONE)
        self.log(f"migration finished successfully (duration {rec.total_s:.1f} s, downtime "
                 f"{rec.downtime_ms if rec.downtime_ms is not None else '?'} ms, WAN "
                 f"{_fmt_bytes(rec.wan_bytes)})")

    # -- RAM compared across the switch-over ------------------------------------------------

    def _compare_ram(self) -> None:
        """Destination paused with the stream loaded, source RAM held since the switch-over:
        compare every page, keep the first differing ones, then let the destination run."""
        from pcteleport.record_store import default_records_dir

        p = self.plan
        ddom = p.dst.domain(p.vm_uuid)
        try:
            if self._ram_src is None:
                raise RamCheckError("the source's RAM was not held")
            dst = RamProbe(p.dst, p.vm)
            try:
                check = compare_across(self._ram_src, dst, ram_layout(ddom).gpa,
                                       default_records_dir() / "ram-evidence" / self.run_id)
            finally:
                dst.close()
        except PcteleportError as exc:
            self._ram_problem = f"RAM check could not compare: {exc}"
            return
        finally:
            ddom.resume()  # whatever the check found, the VM goes on (its source is gone)
        self.record.ram_check = check
        if check.differing:
            self._ram_problem = (
                f"RAM check: {check.differing} of {check.pages} pages differ between "
                f"{p.src.name} at the switch-over and {p.dst.name} (first at guest-physical "
                f"{', '.join(check.first[:4])}): the destination guest is corrupted")
        self.log(f"RAM check: {check.pages} pages compared in {check.elapsed_s:.1f} s, "
                 f"{check.differing} differ")

    # -- the destination guest after the switch-over ------------------------------------------

    def _crashed(self) -> MigrationFailed | None:
        """The failure to report if the destination's console shows the guest crashed."""
        p = self.plan
        crash = guest_health.crash_lines(p.dst, p.console_log, self._console_offset)
        if not crash:
            return None
        self.record.guest_console = crash
        return MigrationFailed(f"VM {p.vm} crashed at {p.dst.name} after the switch-over "
                               f"(guest console: {guest_health.crash_summary(crash)!r})")

    def _check_destination(self) -> None:
        """The destination guest runs and its console shows no oops or panic."""
        p = self.plan
        crashed = self._crashed()
        if crashed is not None:
            raise crashed
        if guest_health.where_runs([p.dst], p.vm_uuid) != p.dst.name:
            raise MigrationFailed(f"VM {p.vm} is not running at {p.dst.name} after migration")

    def _verify(self, ddom: libvirt.virDomain) -> None:
        p = self.plan
        agent = self.agent_for(p.dst, p.vm)
        deadline = time.monotonic() + 30
        while True:
            try:
                agent.ping()
                break
            except PcteleportError as exc:
                if time.monotonic() > deadline:
                    # did it die while we waited?
                    raise self._crashed() or MigrationFailed(f"after migration: {exc}") from None
                time.sleep(1)
        params: dict[str, object] = {"disk": p.data_serial} if p.data_serial else {}
        if p.verify_pages:
            params["sample"] = p.verify_pages
        try:
            result = agent.call("verify", params, timeout=180)
        except AgentUnavailable as exc:  # once more: the port may have held a stale line
            self.log(f"verification: {exc}; asking again")
            result = agent.call("verify", params, timeout=180)
        bad = result.get("mismatches") or []
        if bad:
            raise MigrationFailed(
                f"verification: VM {p.vm} at {p.dst.name}: {len(bad)} cached page(s) differ "
                "from the disk "
                f"(first: {bad[0]}): do not trust this VM's page cache; drop it in the guest"
            )
        checked, files = result.get("pages_checked", 0), result.get("files", 0)
        which = (f"the {checked} cached pages of {files} file{'' if files == 1 else 's'} drawn at"
                 f" random (of {result.get('files_on_disk', '?')})" if result.get("sampled")
                 else f"all {checked} cached pages")
        took = result.get("elapsed_ms")
        self.log(f"verified at {p.dst.name}: guest agent answers, {which} match the disk"
                 + (f" ({took / 1000:.1f} s in the guest)" if took is not None else ""))

    def _fail(self, result: Result, message: str, wan_before: int | None) -> None:
        p = self.plan
        rec = self.record
        rec.result = result
        rec.error = message
        rec.total_s = round(time.monotonic() - self.t0, 3)
        try:
            after = p.src.wan_tx_bytes()
            if wan_before is not None and after is not None:
                rec.wan_bytes = after - wan_before
        except PcteleportError:
            pass
        if self._migrated:
            # QEMU finished: the source is gone; where the VM runs is whatever the check finds.
            if not rec.guest_console:
                self._crashed()
            where = self._where_now()
            deadline = time.monotonic() + 5
            while rec.guest_console and where == p.dst.name and time.monotonic() < deadline:
                time.sleep(0.5)  # a panicking guest is gone a moment later (on_crash, reboot)
                where = self._where_now()
            rec.runs_at = where
            if where == guest_health.NOWHERE:
                where_txt = (f"VM {p.vm} runs nowhere: its definition is at {p.dst.name}, start "
                             "it there once the cause is understood")
            elif where:
                where_txt = f"VM {p.vm} runs at {where}" + (
                    " (its console shows a crash: do not trust it)" if rec.guest_console else "")
            else:
                where_txt = f"could not tell where VM {p.vm} runs (a site did not answer)"
            self.log(f"migration {result}: {message}; {where_txt}")
            return
        self.log(f"migration {result}: {message}; {self._restore_source()}")

    def _restore_source(self) -> str:
        """After a failed run: the source VM running, the destination's copy discarded."""
        p = self.plan
        notes = []
        try:
            # Only an incoming VM this run's migrate call made (and libvirt left behind): one
            # that was there before is somebody else's, maybe another migration's destination.
            ddom = p.dst.find_domain(p.vm_uuid or p.vm) if self._migrate_called else None
            if ddom is not None and ddom.isActive() and \
                    ddom.state()[0] != libvirt.VIR_DOMAIN_RUNNING:
                ddom.destroy()
                notes.append(f"discarded the incoming VM at {p.dst.name}")
        except (libvirt.libvirtError, PcteleportError):
            notes.append(f"could not check {p.dst.name} for a leftover incoming VM")
        try:
            dom = p.src.find_domain(p.vm_uuid or p.vm)
            if dom is not None and dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                dom.resume()  # libvirt resumes it on failure; make sure
        except (libvirt.libvirtError, PcteleportError):
            pass
        where = self.record.runs_at = self._where_now()
        if where == p.src.name:
            state = f"VM {p.vm} is running at {p.src.name}"
        elif where == guest_health.NOWHERE:
            state = f"VM {p.vm} runs nowhere (NOT running at {p.src.name})"
        elif where:
            state = f"VM {p.vm} runs at {where}"
        else:
            state = f"VM {p.vm} is in an unknown state at {p.src.name}"
        return "; ".join([state, *notes])

    def _where_now(self) -> str:
        p = self.plan
        return guest_health.where_runs([p.dst, p.src], p.vm_uuid or p.vm)


def multifd_zstd_by_hand(dom: libvirt.virDomain, params: dict[str, object]) -> None:
    """Multifd zstd for a libvirt that does not know it (Debian 12's 9.0): QEMU's own
    parameter, set on the running source by QMP and given to the destination QEMU, which
    libvirt starts, as `-global migration.multifd-compression=zstd` in its XML."""
    cmd = {"execute": "migrate-set-parameters",
           "arguments": {"multifd-compression": "zstd"}}
    reply = json.loads(libvirt_qemu.qemuMonitorCommand(dom, json.dumps(cmd), 0))
    if "error" in reply:
        raise MigrationFailed(f"QEMU refused multifd zstd: {reply['error'].get('desc')}")
    ET.register_namespace("qemu", QEMU_NS)
    root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE))
    cmdline = root.find(f"{{{QEMU_NS}}}commandline")
    if cmdline is None:
        cmdline = ET.SubElement(root, f"{{{QEMU_NS}}}commandline")
    for value in ("-global", "migration.multifd-compression=zstd"):
        ET.SubElement(cmdline, f"{{{QEMU_NS}}}arg", {"value": value})
    params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = ET.tostring(root, encoding="unicode")


def data_disk_of(dom: libvirt.virDomain, configured: str = "") -> DomainDisk | None:
    """The disk whose replica the other sites hold: the configured one, else the first
    read-only non-root disk, else the first non-root disk."""
    disks = domain_disks(dom.XMLDesc(0))
    return (next((d for d in disks if configured and d.path == configured), None)
            or next((d for d in disks if d.serial != ROOT_SERIAL and d.readonly), None)
            or next((d for d in disks if d.serial != ROOT_SERIAL), None))


def ram_layout(dom: libvirt.virDomain) -> RamLayout:
    os_type = ET.fromstring(dom.XMLDesc(0)).find("./os/type")
    machine = os_type.get("machine", "") if os_type is not None else ""
    return RamLayout.for_machine(machine, dom.info()[1] * 1024)


def plan_for(vm: str, src: SiteRuntime, dst: SiteRuntime, mode: Mode,
             bandwidth_cap: float | None, data_disk: str = "",
             wan: WanLink | None = None, verify_pages: int = VERIFY_SAMPLE_PAGES,
             auto_converge: bool = False, compare_ram: bool = False) -> Plan:
    dom = src.domain(vm)
    chosen = data_disk_of(dom, data_disk)
    return Plan(
        vm=dom.name(), vm_uuid=dom.UUIDString(), src=src, dst=dst, mode=mode,
        bandwidth_cap=bandwidth_cap, data_disk=chosen.path if chosen else "",
        data_serial=chosen.serial if chosen else "", wan=wan, verify_pages=verify_pages,
        auto_converge=auto_converge, compare_ram=compare_ram,
        console_log=guest_health.console_log_of(dom.XMLDesc(0)),
    )
