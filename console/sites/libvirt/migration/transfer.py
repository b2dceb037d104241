"""The transfer itself: libvirt's migrate3 in a thread of its own, one sample and one log line a
second until it returns, phases from libvirt's lifecycle events, a failed relay aborting the job.
"""

from __future__ import annotations

import contextlib
import threading
import time

import libvirt

from pcteleport.records import Phase
from pcteleport.sites.libvirt.lifecycle import LifecycleEvent
from pcteleport.sites.libvirt.migration import switchover
from pcteleport.sites.libvirt.migration.journal import Journal
from pcteleport.sites.libvirt.migration.modes import Prepared
from pcteleport.sites.libvirt.migration.plan import (
    Aborted,
    AbortSignal,
    MigrationFailed,
    Plan,
    fmt_bytes,
)
from pcteleport.sites.libvirt.migration.stats import (
    Cadence,
    Convergence,
    DiskConvergence,
    Stall,
    WanRate,
    build_sample,
    not_converging,
    progress_line,
)
from pcteleport.sites.libvirt.site_runtime import WanMeter
from pcteleport.teleport import events


class TransferFailed(MigrationFailed):
    """libvirt's migration job failed, and libvirt's message is all we know yet."""


#: how long a job we abort after our own failure may take to end before the run reports
ABANDON_S = 120.0


class Transfer:
    def __init__(self, plan: Plan, journal: Journal, prepared: Prepared,
                 abort: AbortSignal) -> None:
        self.plan, self.journal, self.prepared, self.abort = plan, journal, prepared, abort
        self.called = False  # migrate3 was called: an incoming VM at the destination is ours
        self.migrated = False  # QEMU's migration completed: the VM now runs at the destination
        self._sized_at = -1.0  # the relay stats the switch-over was last sized from (their t)
        self.disk_processed = 0  # the most libvirt said its storage migration copied
        self.memory_processed = 0  # ... and the memory stream (for a run that failed)
        self.told_qemu = False  # avail-switchover-bandwidth was set on the source QEMU
        self.stalled = ""  # why we abandoned the job: it moved nothing, or never converged
        self._drain: float | None = None  # the WAN's drain rate from the latest relay stats

    def run(self, dom: libvirt.virDomain) -> None:
        """Returns once QEMU's migration completed; raises MigrationFailed or Aborted."""
        p = self.plan
        dconn = p.dst.conn()
        outcome: dict[str, object] = {}

        def perform() -> None:
            try:
                outcome["domain"] = dom.migrate3(dconn, self.prepared.params,
                                                 self.prepared.flags)
            except libvirt.libvirtError as exc:
                outcome["error"] = exc

        worker = threading.Thread(target=perform, daemon=True, name="migrate3")
        for site in (p.src, p.dst):
            site.events.add(self._on_lifecycle)
        try:
            self.journal.phase(Phase.ITERATIVE, 1)
            self.called = True
            worker.start()
            try:
                meter = p.src.wan_meter()
                try:
                    self._sample_loop(dom, worker, meter)
                finally:
                    if meter is not None:
                        meter.close()
            except BaseException:
                # Whatever went wrong here, libvirt's job must not go on unwatched: a run
                # that leaves migrate3 copying in the background has lost track of its VM.
                with contextlib.suppress(libvirt.libvirtError):
                    dom.abortJob()
                worker.join(ABANDON_S)
                raise
            worker.join()
        finally:
            for site in (p.src, p.dst):
                site.events.remove(self._on_lifecycle)
            if self.prepared.maps is not None:
                self.prepared.maps.stop()  # the guest is paused or gone: no more refreshes
        self.migrated = "domain" in outcome
        if "error" in outcome:
            err = outcome["error"]
            assert isinstance(err, libvirt.libvirtError)
            relays = self.prepared.relays
            if relays is not None and relays.failure():
                relays.settle(2.0)  # the peer of a killed relay often complains first
            relay_problem = relays.failure() if relays else None
            self.abort.check()
            if relay_problem:  # we aborted the job because a relay failed
                raise MigrationFailed(relay_problem)
            if self.stalled:  # we aborted it: nothing moved for too long, or no convergence
                raise MigrationFailed(self.stalled)
            if err.get_error_code() == libvirt.VIR_ERR_OPERATION_ABORTED:
                raise Aborted("aborted through libvirt (pcteleport abort, or virsh domjobabort)")
            raise TransferFailed(f"libvirt: {err.get_error_message()}")

    def _on_lifecycle(self, ev: LifecycleEvent) -> None:
        p, j = self.plan, self.journal
        if ev.vm_uuid != p.vm_uuid:
            return
        if ev.site == p.src.name and ev.suspended_for_migration:
            j.phase(Phase.STOP_AND_COPY, j.iteration, at=ev.at)
            scaled = self.prepared.downtime
            if scaled is not None and scaled.applied is not None:
                # what QEMU sized its last round by (only changes of 25 % are logged)
                j.log(f"guest paused for the switch-over with the downtime limit at "
                      f"{scaled.applied} ms of {scaled.limit_ms}")
        elif ev.site == p.dst.name and ev.resumed_after_migration:
            j.phase(Phase.RESUME, j.iteration, at=ev.at)

    def _sample_loop(self, dom: libvirt.virDomain, worker: threading.Thread,
                     meter: WanMeter | None) -> None:
        j, relays = self.journal, self.prepared.relays
        wan = WanRate(*((meter.latest, meter.latest_at) if meter is not None else (None, 0.0)))
        remaining_min: int | None = None
        start = time.monotonic()
        stall = Stall(start)
        converging = Convergence.for_run(self.plan.auto_converge)
        disks_converging = DiskConvergence()
        moving = [d.target for d in self.plan.disks if d.writable]  # the mirror's disks
        cadence = Cadence(start)
        while worker.is_alive():
            worker.join(cadence.due_in(time.monotonic()))
            if not worker.is_alive():
                break
            try:
                stats = dom.jobStats()  # (not dom.state(): it waits seconds for the job lock)
            except libvirt.libvirtError:
                stats = None
            cadence.polled(time.monotonic())  # (after it: the poll itself may have blocked)
            if stats is None:
                continue  # the job just ended; the worker tells us how
            wan_rate = (wan.update(meter.latest, meter.latest_at) if meter is not None
                        else 0.0)
            it = int(stats.get("memory_iteration", j.iteration) or j.iteration)
            if it > j.iteration and j.current == Phase.ITERATIVE:
                j.iteration = it
                j.phase(Phase.ITERATIVE, it)
            sample = build_sample(j.t(), j.current, stats, wan_rate,
                                  relays.send.latest if relays is not None else None)
            # the mirror goes on copying the guest's writes once in sync, which libvirt's disk
            # counter no longer shows: its block jobs' progress does
            mirrored = mirror_progress(dom, moving)
            self.disk_processed = max(self.disk_processed, sample.disk_processed_bytes,
                                      mirrored)
            self.memory_processed = max(self.memory_processed,
                                        int(stats.get("memory_processed", 0) or 0))
            j.emit(sample)
            j.log(progress_line(sample, remaining_min))
            if sample.total_bytes:  # (not while only the disks are being copied)
                remaining_min = (sample.remaining_bytes if remaining_min is None
                                 else min(remaining_min, sample.remaining_bytes))
            if self.prepared.sizer is not None and relays is not None:
                self._size_switchover(dom, relays.send.latest, stats)
            problem = relays.failure() if relays is not None else None
            if problem:
                j.log(problem)
                with contextlib.suppress(libvirt.libvirtError):
                    dom.abortJob()
            moved = (max(sample.disk_processed_bytes, mirrored)
                     + int(stats.get("memory_processed", 0) or 0))
            idle = stall.still_for(moved, time.monotonic())
            if idle > self.plan.stall_s:
                self._abandon(dom, f"no progress for {idle:.0f} s: nothing reached "
                              f"{self.plan.dst.name} over the WAN (is the link down?); "
                              "the migration was abandoned")
            now = time.monotonic()
            if sample.total_bytes:
                converging.update(sample.iteration, sample.remaining_bytes, now)
            if disks_converging.stuck(sample, now):
                self._abandon(dom, disks_converging.why(sample, now))
            if converging.stuck(now, sample.total_bytes):
                self._abandon(dom, not_converging(sample, converging, self.plan.auto_converge))

    def _abandon(self, dom: libvirt.virDomain, why: str) -> None:
        """Abort libvirt's job for `why` (the first reason only): the run fails with it."""
        if self.stalled:
            return
        self.stalled = why
        self.journal.log(why)
        with contextlib.suppress(libvirt.libvirtError):
            dom.abortJob()

    def _size_switchover(self, dom: libvirt.virDomain, latest: object,
                         job: dict | None = None) -> None:
        """Tell QEMU the WAN's drain rate, from each new stats event of the send relay (QEMU
        >= 8.2), or scale its downtime limit by it at every sample (older QEMU)."""
        sizer = self.prepared.sizer
        if sizer is None:
            return
        fresh = isinstance(latest, events.Stats) and latest.t != self._sized_at
        if fresh:
            assert isinstance(latest, events.Stats)
            self._sized_at = latest.t
            self._drain = sizer.update(latest)
        if self.prepared.downtime is not None:
            # QEMU's rate moves every sample, the drain rate only with the relay's stats
            self._scale_downtime(dom, float((job or {}).get("memory_bps", 0) or 0))
            return
        rate = self._drain
        if not fresh or rate is None or not sizer.worth_telling(rate):
            return
        try:
            switchover.set_rate(dom, int(rate))
            self.told_qemu = True
        except libvirt.libvirtError as exc:
            self.prepared.sizer = None  # once is enough to know
            self.journal.log(f"could not size the switch-over by the WAN: {exc}")
            return
        if sizer.applied is None or abs(rate - sizer.applied) > 0.25 * sizer.applied:
            self.journal.log(f"switch-over sized at {fmt_bytes(rate)}/s of guest memory "
                             "(the WAN's rate: the remainder costs its size)")
        sizer.applied = rate

    def _scale_downtime(self, dom: libvirt.virDomain, memory_bps: float) -> None:
        scaled = self.prepared.downtime
        assert scaled is not None
        limit = scaled.update(self._drain, memory_bps)
        if limit is None or not scaled.worth_telling(limit):
            return
        try:
            dom.migrateSetMaxDowntime(limit, 0)
        except libvirt.libvirtError as exc:
            self.prepared.sizer = None  # once is enough to know; the limit is given back
            self.journal.log(f"could not scale the downtime limit: {exc}")
            return
        before, scaled.applied = scaled.applied, limit
        if before is None or abs(limit - before) > 0.25 * before:
            self.journal.log(
                f"downtime limit {limit} ms of {scaled.limit_ms}: the WAN drains "
                f"{fmt_bytes(self._drain or 0)}/s of guest memory, QEMU writes up to "
                f"{fmt_bytes(max(scaled.qemu_rates))}/s into the relay")

    def forget_switchover(self, dom: libvirt.virDomain | None) -> None:
        """After a failed run the source QEMU lives on: its next migration (any mode) must not
        inherit the rate we told it (0 is QEMU's own default: estimate it yourself) nor the
        downtime limit we scaled (the operator's comes back). After a successful run the
        source QEMU is gone, and the destination's never held either."""
        if self.migrated or dom is None:
            return
        if self.told_qemu:
            try:
                switchover.set_rate(dom, 0)
            except libvirt.libvirtError as exc:
                self.journal.log(f"warning: could not reset {switchover.PARAM} at "
                                 f"{self.plan.src.name}: {exc}")
        scaled = self.prepared.downtime
        if scaled is not None and scaled.applied is not None:
            try:
                dom.migrateSetMaxDowntime(scaled.limit_ms, 0)
            except libvirt.libvirtError as exc:
                self.journal.log(f"warning: could not give back the downtime limit "
                                 f"({scaled.limit_ms} ms) at {self.plan.src.name}: {exc}")


def mirror_progress(dom: libvirt.virDomain, targets: list[str]) -> int:
    """Bytes the storage migration's block jobs have copied so far (their `cur`), the guest's
    writes after the mirrors were in sync included; 0 where a disk has no job."""
    total = 0
    for target in targets:
        try:
            info = dom.blockJobInfo(target, 0)
        except libvirt.libvirtError:
            continue
        total += int(info.get("cur", 0) or 0) if isinstance(info, dict) else 0
    return total
