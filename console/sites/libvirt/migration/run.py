"""MigrationRun: the order of one migration — prepare the mode, transfer, account, check the
destination — and, whatever happens, an honest end (see the package docstring)."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path

import libvirt

from pcteleport.errors import PcteleportError
from pcteleport.record_store import default_records_dir
from pcteleport.records import (
    Composition,
    DiskMove,
    MigrationCpu,
    MigrationEvent,
    MigrationRecord,
    Phase,
    PhaseMark,
    Result,
)
from pcteleport.sites.libvirt.migration import modes, outcome, stats, storage, tls
from pcteleport.sites.libvirt.migration.cpu import CpuMeter
from pcteleport.sites.libvirt.migration.destination import Destination
from pcteleport.sites.libvirt.migration.journal import Journal
from pcteleport.sites.libvirt.migration.plan import (
    Aborted,
    AbortSignal,
    MigrationFailed,
    Plan,
    fmt_bytes,
    teleport_sources,
)
from pcteleport.sites.libvirt.migration.transfer import Transfer, TransferFailed
from pcteleport.sites.libvirt.ramcheck import RamProbe
from pcteleport.sites.libvirt.relays import RelayFailure
from pcteleport.sites.libvirt.site_runtime import SiteRuntime
from pcteleport.sites.libvirt.vm_lock import VmLock
from pcteleport.teleport import events


class MigrationRun:
    """Runs one migration; `abort()` may be called from any thread."""

    def __init__(self, plan: Plan, on_event: Callable[[MigrationEvent], None],
                 agent_for: modes.AgentFor, composition: Composition | None = None) -> None:
        self.plan, self.agent_for = plan, agent_for
        self.run_id = uuid.uuid4().hex[:12]
        crypt = tls.encryption(plan)
        self.record = MigrationRecord(
            run_id=self.run_id, vm=plan.vm, from_site=plan.src.name, to_site=plan.dst.name,
            mode=plan.mode, vm_uuid=plan.vm_uuid, bandwidth_cap_bytes_per_s=plan.bandwidth_cap,
            started_at=time.time(), wan=plan.wan, composition=composition,
            wan_encryption=crypt.summary, memory_encryption=crypt.memory,
            disk_encryption=crypt.disks,
        )
        self.journal = Journal(self.record, on_event)
        self.log = self.journal.log
        self.prepared = modes.Prepared()
        self.transfer = Transfer(plan, self.journal, self.prepared, AbortSignal())
        self.destination = Destination(plan, self.record, self.log)
        self._domain: libvirt.virDomain | None = None
        self._ram_src: RamProbe | None = None
        self.cpu = CpuMeter(plan) if plan.measure_cpu else None

    def abort(self, reason: str = "aborted by the operator") -> None:
        if self.transfer.migrated:  # too late: stopping now would only lose the checks
            self.log(f"not aborted: the switch-over is done and VM {self.plan.vm} runs at "
                     f"{self.plan.dst.name}; its checks there go on")
            return
        self.transfer.abort.set(reason)
        if self._domain is not None:  # no job yet, or already over: the run sees the flag
            with contextlib.suppress(libvirt.libvirtError):
                self._domain.abortJob()
        if self.prepared.relays is not None:
            threading.Thread(target=self.prepared.relays.stop, daemon=True).start()

    def run(self) -> MigrationRecord:
        p, abort = self.plan, self.transfer.abort
        self.journal.phase(Phase.PREPARE)
        self.log(f"starting migration of VM {p.vm} from {p.src.name} to {p.dst.name} "
                 f"(mode {p.mode})")
        wan_before: int | None = None
        lock: VmLock | None = None
        try:
            dom = self._domain = p.src.domain(p.vm_uuid or p.vm)
            if dom.state()[0] != libvirt.VIR_DOMAIN_RUNNING:
                raise MigrationFailed(f"VM {p.vm} is not running at {p.src.name}")
            lock = VmLock(p.src, p.vm_uuid, p.vm)
            if p.dst.find_domain(p.vm) is not None:
                raise MigrationFailed(f"a VM named {p.vm} already exists at {p.dst.name}")
            abort.check()
            if self.cpu is not None:  # the watchers start while the mode prepares
                self.cpu.start()
            self.destination.note_console()
            modes.prepare(p, dom, self.journal, self.agent_for, self.prepared)
            abort.check()
            if p.compare_ram:
                self.prepared.flags |= libvirt.VIR_MIGRATE_PAUSED  # resumed once compared
                self._ram_src = RamProbe(p.src, p.vm)
                self.log(f"RAM check: holding the source's RAM "
                         f"({fmt_bytes(self._ram_src.ready['bytes'])}) to compare it with "
                         "the destination's at the switch-over")
            if self.cpu is not None:
                self.cpu.ready()
            p.dst.conn()  # connect now, so the clock below starts with the migration itself
            wan_before = p.src.wan_tx_bytes()
            self.transfer.run(dom)
            self._finish(wan_before)
        except Aborted as exc:
            self._fail(Result.ABORTED, str(exc), wan_before)
        except TransferFailed as exc:
            if abort.is_set():
                self._fail(Result.ABORTED, abort.reason, wan_before)
            elif self.destination.qemu_crashed():  # libvirt only says the channel broke
                self._fail(Result.FAILED, f"the QEMU at {p.dst.name} receiving the VM died "
                           f"(its libvirt log: reason=crashed); {exc}", wan_before)
            elif storage.NO_SPACE in str(exc):  # libvirt names the disk, not the host
                self._fail(Result.FAILED, storage.disk_full(p, str(exc)), wan_before)
            elif not answers(p.dst):  # libvirt only says "client socket is closed"
                self._fail(Result.FAILED, f"libvirt at {p.dst.name} stopped answering during "
                           f"the migration; {exc}", wan_before)
            else:
                self._fail(Result.FAILED, str(exc), wan_before)
        except (PcteleportError, libvirt.libvirtError) as exc:
            if abort.is_set():  # the abort made libvirt or a relay fail: say it was the abort
                self._fail(Result.ABORTED, abort.reason, wan_before)
            else:
                self._fail(Result.FAILED, exc.get_error_message() if isinstance(
                    exc, libvirt.libvirtError) else str(exc), wan_before)
        except Exception as exc:  # a bug of ours: still a record, the truth about the VM
            where = traceback.extract_tb(exc.__traceback__)[-1]
            self._fail(Result.FAILED, f"internal error in pcteleport ({type(exc).__name__}: "
                       f"{exc} at {Path(where.filename).name}:{where.lineno}); the migration "
                       "was abandoned", wan_before)
        finally:
            self.transfer.forget_switchover(self._domain)
            if self.prepared.maps is not None:
                self.prepared.maps.stop()
            if self.prepared.relays is not None:
                self.prepared.relays.stop()
            if self.prepared.tunnel is not None:
                self.prepared.tunnel.stop()
            with contextlib.suppress(PcteleportError):
                if self._ram_src is not None:
                    self._ram_src.close()
            if self.cpu is not None:
                self.cpu.close()
            with contextlib.suppress(PcteleportError):
                if lock is not None:
                    lock.release()
        return self.record

    def _finish(self, wan_before: int | None) -> None:
        p, rec, relays = self.plan, self.record, self.prepared.relays
        # first: the destination QEMU's main thread goes on with the guest's I/O from now on
        measured = self.cpu.qemu_and_tunnels(self.prepared) if self.cpu is not None else []
        ram_problem = (self.destination.compare_ram(
            self._ram_src, default_records_dir() / "ram-evidence" / self.run_id)
            if p.compare_ram else "")
        resumed_at = time.monotonic()
        self.journal.phase(Phase.RESUME)  # unless libvirt's event marked it already
        if relays is not None:
            try:
                relays.wait_done(60)
            except RelayFailure as exc:
                # QEMU finished; a relay complaint afterwards is worth a line, not a failure.
                self.log(f"warning: {exc}")
        ddom = p.dst.domain(p.vm)
        completed = completed_stats(ddom)
        # Total migration time: from the request to the VM running at the destination (libvirt's
        # resume event). What follows (relays exiting, libvirt's completed stats, verification)
        # is bookkeeping the guest does not wait for.
        resume = next((m.t for m in rec.phases if m.phase == Phase.RESUME), None)
        rec.total_s = resume if resume is not None else self.journal.t()
        if completed.get("downtime") is not None:
            rec.downtime_ms = float(completed["downtime"])
            if not any(m.phase == Phase.STOP_AND_COPY for m in rec.phases):
                # No lifecycle event came (no event loop): place it by the real downtime.
                at = resume if resume is not None else self.journal.t(resumed_at)
                self.journal.place_phase(PhaseMark(
                    Phase.STOP_AND_COPY, round(at - rec.downtime_ms / 1000, 3),
                    self.journal.iteration))
        summary = relays.send.event(events.Summary) if relays is not None else None
        rec.guest_bytes, pages = stats.final_counts(completed, summary)
        if summary is not None or completed:
            rec.pages = pages
        if relays is not None:
            rec.relay_cpu = cpu = stats.relay_cpu(summary, relays.recv.event(events.Summary))
            if cpu is not None:
                self.log(f"relays used {cpu.send_s:.2f} s CPU to send, {cpu.recv_s:.2f} s to "
                         f"receive ({cpu.send_s_per_gb:.2f} and {cpu.recv_s_per_gb:.2f} s per GB "
                         "of guest memory)")
        if self.cpu is not None:
            rec.migration_cpu = mc = stats.migration_cpu(
                measured + self.cpu.relays(self.prepared), self.cpu.missing, rec.pages)
            if mc is not None:
                self.log(cpu_line(mc))
        if summary is not None and self.prepared.maps is not None:
            rec.map_refreshes = self.prepared.maps.refreshes
            rec.pages_teleported_later = summary.counters.pages_teleported_later
        self._account_wan(wan_before, completed)
        # QEMU finished: the VM writes the destination's disks now, the source's are stale
        storage.drop_source_layers(p, self.prepared.storage, self.log)
        self.destination.check()
        if ram_problem:
            raise MigrationFailed(ram_problem)
        agent = self.agent_for(p.dst, p.vm)
        self.destination.verify(agent)
        self.destination.check_writes(agent)
        self.destination.check()  # once more: a guest can die while it is being verified
        rec.runs_at, rec.result = p.dst.name, Result.OK
        self.journal.phase(Phase.DONE)
        split = (f": disks {fmt_bytes(rec.disk_wan_bytes)}, memory "
                 f"{fmt_bytes(rec.memory_wan_bytes)}" if rec.disk_wan_bytes else "")
        self.log(f"migration finished successfully (duration {rec.total_s:.1f} s, downtime "
                 f"{rec.downtime_ms if rec.downtime_ms is not None else '?'} ms, WAN "
                 f"{fmt_bytes(rec.wan_bytes)}{split})")

    def _account_wan(self, wan_before: int | None, completed: dict | None = None) -> None:
        rec, relays = self.record, self.prepared.relays
        after = self.plan.src.wan_tx_bytes()
        if wan_before is not None and after is not None:
            rec.wan_bytes = after - wan_before
        latest = relays.send.latest if relays is not None else None
        done = completed or {}
        disk = max(int(done.get("disk_processed", 0) or 0), self.transfer.disk_processed)
        memory = int(done.get("memory_processed", 0) or 0) or self.transfer.memory_processed
        rec.disk_wan_bytes, rec.memory_wan_bytes = stats.split_wan(
            rec.wan_bytes, memory, latest.counters.wan_bytes if latest is not None else None,
            disk)
        rec.disks = per_disk_pages(self.plan, rec.pages.teleported,
                                   relays.send.event(events.DiskPages) if relays else None)

    def _fail(self, result: Result, message: str, wan_before: int | None) -> None:
        rec = self.record
        rec.result, rec.error, rec.total_s = result, message, self.journal.t()
        with contextlib.suppress(PcteleportError):
            self._account_wan(wan_before)
        where = outcome.conclude(self.plan, rec, self.destination,
                                 migrated=self.transfer.migrated,
                                 migrate_called=self.transfer.called)
        with contextlib.suppress(PcteleportError):
            if not self.transfer.migrated:  # the source runs on its own disks: ours go
                storage.discard_destination(self.plan, self.prepared.storage, self.log)
            elif self.prepared.storage.created:  # the source's are stale (once only)
                storage.drop_source_layers(self.plan, self.prepared.storage, self.log)
        self.log(f"migration {result}: {message}; {where}")


def cpu_line(mc: MigrationCpu) -> str:
    """The run's log line: each side's CPU, what it is made of, and what was not measured."""
    def side(name: str, total: float | None, per_gb: float | None) -> str:
        parts = ", ".join(f"{p.process} {p.cpu_s:.2f} s" for p in mc.processes
                          if p.side == name)
        head = f"{total:.2f} s" if total is not None else "incomplete"
        return (f"{name} {head} ({parts or 'nothing measured'}"
                + (f"; {per_gb:.2f} s per GB of guest memory)" if per_gb is not None else ")"))

    missing = f"; not measured: {'; '.join(mc.missing)}" if mc.missing else ""
    return (f"CPU of the migration: {side('source', mc.send_s, mc.send_s_per_gb)}, "
            f"{side('destination', mc.recv_s, mc.recv_s_per_gb)}{missing}")


def answers(site: SiteRuntime) -> bool:
    """Does libvirt at `site` answer now (its connection opened again if it was dropped)?"""
    try:
        site.conn().getLibVersion()
        return True
    except (PcteleportError, libvirt.libvirtError):
        return False


def per_disk_pages(plan: Plan, teleported: int,
                   counts: events.DiskPages | None) -> list[DiskMove]:
    """The plan's disks with the pages teleported from each (the send relay counts them per
    disk, in the order of teleport_sources) and those the map named whose block the base no
    longer held (written since: sent whole)."""
    sources = [d.target for d in teleport_sources(plan)] if plan.disks else []
    sent, refused = counts.counts() if counts is not None else ([], [])
    out = []
    for d in plan.disks:
        i = sources.index(d.target) if d.target in sources else -1
        if counts is None:  # an older relay: one disk, the run's total
            n, w = (teleported if i == 0 and len(sources) == 1 else 0), 0
        else:
            n = sent[i] if 0 <= i < len(sent) else 0
            w = refused[i] if 0 <= i < len(refused) else 0
        out.append(dataclasses.replace(d, pages_teleported=n, pages_written_since_base=w))
    return out


def completed_stats(ddom: libvirt.virDomain) -> dict:
    """libvirt's completed-job stats, which it fills a moment after the job ends."""
    completed: dict = {}
    for _ in range(10):
        try:
            completed = ddom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        except libvirt.libvirtError:
            completed = {}
        if completed.get("downtime"):
            break
        time.sleep(0.3)
    return completed
