"""The transfer never leaves libvirt's job running unwatched (sites/libvirt/migration/
transfer.py): a migration that copies without converging is abandoned with one line saying
why, and any failure of our own while QEMU copies aborts the job before the run reports.
A fake source domain stands in for libvirt (migrate3 copies until abortJob)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import libvirt
import pytest

from pcteleport.records import MigrationRecord, Mode
from pcteleport.sites.libvirt.migration import modes, transfer
from pcteleport.sites.libvirt.migration.journal import Journal
from pcteleport.sites.libvirt.migration.plan import AbortSignal, MigrationFailed

MiB = 2**20


class CopyingForever:
    """A source domain whose QEMU copies passes of `pass_bytes` for ever (or until aborted);
    each jobStats call is one second of the copy."""

    def __init__(self, pass_bytes: int = 96 * MiB, per_call: int = 5 * MiB,
                 broken_stats_after: int | None = None) -> None:
        self.pass_bytes, self.per_call = pass_bytes, per_call
        self.broken_stats_after = broken_stats_after
        self.aborted = threading.Event()
        self.calls = 0
        self.iteration, self.remaining, self.processed = 1, 256 * MiB, 0

    def migrate3(self, dconn: object, params: dict, flags: int) -> object:
        self.aborted.wait(60)
        raise libvirt.libvirtError("operation aborted: job 'migration out' canceled by client")

    def abortJob(self) -> int:
        self.aborted.set()
        return 0

    def jobStats(self) -> dict:
        self.calls += 1
        if self.broken_stats_after is not None and self.calls > self.broken_stats_after:
            raise RuntimeError("a bug of ours")
        self.processed += self.per_call
        self.remaining -= self.per_call
        if self.remaining <= 0:
            self.iteration += 1
            self.remaining = self.pass_bytes
        return {"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED, "memory_total": 256 * MiB,
                "memory_remaining": self.remaining, "memory_processed": self.processed,
                "memory_bps": self.per_call, "memory_dirty_rate": 2095,
                "memory_page_size": 4096, "memory_iteration": self.iteration}


class Site:
    def __init__(self, name: str) -> None:
        self.name = name
        self.events = SimpleNamespace(add=lambda fn: None, remove=lambda fn: None)

    def conn(self) -> object:
        return object()

    def wan_meter(self) -> None:
        return None


@pytest.fixture
def fast_clock(monkeypatch):
    """Each sample a second apart on the run's clock, without waiting a second."""
    clock = {"now": 0.0}

    def monotonic() -> float:
        clock["now"] += 0.25
        return clock["now"]

    monkeypatch.setattr(transfer.time, "monotonic", monotonic)
    join = threading.Thread.join
    monkeypatch.setattr(transfer.threading.Thread, "join",
                        lambda self, timeout=None: join(self, 0.001 if timeout is not None
                                                        else None))


def run_transfer(dom: CopyingForever, auto_converge: bool = False,
                 disks: tuple[str, ...] = ()) -> tuple[Journal, Exception]:
    plan = SimpleNamespace(vm="web", vm_uuid="u", mode=Mode.STOCK, src=Site("tokyo"),
                           dst=Site("osaka"), stall_s=30.0, auto_converge=auto_converge,
                           disks=[SimpleNamespace(target=t, writable=True) for t in disks])
    j = Journal(MigrationRecord(run_id="r", vm="web", from_site="tokyo", to_site="osaka",
                                mode=Mode.STOCK), lambda ev: None)
    t = transfer.Transfer(plan, j, modes.Prepared(), AbortSignal())  # type: ignore[arg-type]
    with pytest.raises(Exception) as info:
        t.run(dom)  # type: ignore[arg-type]
    return j, info.value


def test_a_migration_that_never_converges_is_abandoned_saying_why(fast_clock) -> None:
    dom = CopyingForever()
    j, err = run_transfer(dom)
    assert isinstance(err, MigrationFailed)
    assert str(err).startswith("not converging: after ")
    assert "the guest still dirtied 96.0 MiB between passes" in str(err)
    assert dom.aborted.is_set()
    assert any(line.text.endswith(str(err)) for line in j.record.log)


def test_a_migration_that_converges_late_is_left_alone(fast_clock) -> None:
    """Passes that shrink (auto-converge throttling the guest) are progress, however many."""
    dom = CopyingForever(pass_bytes=96 * MiB)
    original = dom.jobStats

    def shrinking() -> dict:
        stats = original()
        dom.pass_bytes = max(MiB, int(dom.pass_bytes * 0.97))
        if dom.iteration > 25:
            dom.aborted.set()  # stands for QEMU's switch-over: the job ends
        return stats

    dom.jobStats = shrinking  # type: ignore[method-assign]
    _, err = run_transfer(dom, auto_converge=True)
    assert not str(err).startswith("not converging")


def test_our_own_failure_aborts_the_job_before_the_run_hears_of_it(fast_clock) -> None:
    dom = CopyingForever(broken_stats_after=3)
    _, err = run_transfer(dom)
    assert isinstance(err, RuntimeError) and str(err) == "a bug of ours"
    assert dom.aborted.is_set()  # libvirt's job did not go on unwatched


class HeldJob:
    """A source domain on which libvirt still holds a job after the run: it ends `ends_after`
    jobInfo calls after abortJob (never, if None)."""

    def __init__(self, ends_after: int | None = 1, held: bool = True) -> None:
        self.ends_after, self.held = ends_after, held
        self.aborts, self.since_abort = 0, 0

    def jobInfo(self) -> list[int]:
        if self.aborts:
            self.since_abort += 1
            if self.ends_after is not None and self.since_abort > self.ends_after:
                self.held = False
        kind = libvirt.VIR_DOMAIN_JOB_UNBOUNDED if self.held else libvirt.VIR_DOMAIN_JOB_NONE
        return [kind, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]

    def abortJob(self) -> int:
        self.aborts += 1
        return 0


def test_a_job_libvirt_still_holds_after_the_run_is_aborted() -> None:
    from pcteleport.sites.libvirt.migration.outcome import end_lingering_job

    dom = HeldJob(ends_after=2)
    notes = end_lingering_job(dom, "tokyo", "web", wait_s=5)
    assert dom.aborts == 1 and not dom.held
    assert notes == ["aborted the job libvirt at tokyo still held on VM web after the run"]


def test_no_job_left_means_no_abort() -> None:
    from pcteleport.sites.libvirt.migration.outcome import end_lingering_job

    dom = HeldJob(held=False)
    assert end_lingering_job(dom, "tokyo", "web", wait_s=5) == []
    assert dom.aborts == 0


def test_a_job_that_will_not_end_is_named_with_the_way_out() -> None:
    from pcteleport.sites.libvirt.migration.outcome import end_lingering_job

    dom = HeldJob(ends_after=None)
    notes = end_lingering_job(dom, "tokyo", "web", wait_s=1)
    assert dom.aborts == 1 and dom.held
    assert notes == ["libvirt at tokyo still holds a job on VM web after the run; "
                     "`pcteleport abort web` ends it"]


class MirrorBusy(CopyingForever):
    """libvirt's counters stand still for `still` samples (its disk counter stops once the
    mirrors are in sync; the memory stream waits behind the mirror's backlog), while the
    block job of vdb copies on (`mirroring`) or not; then the copy goes on as before."""

    def __init__(self, still: int, mirroring: bool) -> None:
        super().__init__(pass_bytes=96 * MiB)
        self.still, self.mirroring, self.cur = still, mirroring, 0

    def jobStats(self) -> dict:
        if self.calls < self.still:
            self.calls += 1
            return {"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED, "memory_total": 256 * MiB,
                    "memory_remaining": 10 * MiB, "memory_processed": 0,
                    "disk_processed": 50 * MiB, "disk_total": 50 * MiB,
                    "memory_iteration": 13}
        return super().jobStats()

    def blockJobInfo(self, disk: str, flags: int) -> dict:
        if disk != "vdb":
            raise libvirt.libvirtError("no job on that disk")
        if self.mirroring and self.calls < self.still:
            self.cur += 5 * MiB
        return {"type": 2, "cur": 50 * MiB + self.cur, "end": 50 * MiB + self.cur}


def test_a_mirror_copying_the_guests_writes_is_progress(fast_clock) -> None:
    """tpcc's zstd run was abandoned as 'no progress for 30 s: nothing reached osaka' while
    the WAN carried 12 MB/s: the mirror's backlog of the guest's writes, which libvirt's
    counters do not show once the mirrors are in sync. Its block job's progress counts."""
    busy = MirrorBusy(still=60, mirroring=True)
    _j, err = run_transfer(busy, disks=("vda", "vdb"))
    assert not str(err).startswith("no progress"), err  # it went on, then never converged
    idle = MirrorBusy(still=60, mirroring=False)
    _j, err = run_transfer(idle, disks=("vda", "vdb"))
    assert str(err).startswith("no progress for "), err


class DisksNeverInSync(CopyingForever):
    """The storage copy only: the guest writes its disks as fast as the mirror copies them
    (libvirt's disk_total grows with disk_processed, the memory never starts)."""

    def jobStats(self) -> dict:
        self.calls += 1
        copied = self.calls * 12 * MiB
        return {"type": libvirt.VIR_DOMAIN_JOB_UNBOUNDED, "disk_processed": copied,
                "disk_total": 2048 * MiB + copied, "disk_remaining": 2048 * MiB}


def test_disks_that_never_get_in_sync_are_abandoned_saying_why(fast_clock) -> None:
    dom = DisksNeverInSync()
    j, err = run_transfer(dom)
    assert any(line.text.endswith(str(err)) for line in j.record.log)
    assert isinstance(err, MigrationFailed)
    assert str(err).startswith("disks not converging: in "), err
    assert "for writable layers that held 2.0 GiB at its start" in str(err)
    assert dom.aborted.is_set()
    assert dom.calls * 12 >= 3 * 2048  # not before three times the layers were copied
