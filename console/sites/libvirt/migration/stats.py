"""Pure functions from the numbers libvirt and the relays report to what the record holds:
a sample per second while the migration runs, the progress line, the final counts.

libvirt's job stats are a dict (`virDomainGetJobStats` keys: memory_total, memory_remaining,
memory_bps, memory_dirty_rate in pages/s, memory_constant = zero pages, memory_normal = pages
sent whole, ...); the relay's counters (teleport only) replace libvirt's page counts, because
QEMU cannot see which of the pages it sent the relay teleported."""

from __future__ import annotations

from pcteleport.records import (
    PAGE_SIZE,
    MigrationCpu,
    MigrationSample,
    PageCounts,
    Phase,
    ProcessCpu,
    RelayCpu,
)
from pcteleport.sites.libvirt.migration.plan import fmt_bytes
from pcteleport.teleport import events


def relay_pages(counters: events.Stats | events.Summary) -> PageCounts:
    c = counters.counters
    return PageCounts(teleported=c.pages_teleported, zero=c.pages_zero, sent=c.pages_sent,
                      written_since_base=c.pages_refused)


def build_sample(t: float, phase: Phase | None, stats: dict, wan_rate: float,
                 relay: events.Stats | events.Summary | None = None) -> MigrationSample:
    """One sample from libvirt's job stats, the WAN rate measured at the source (bytes/s) and
    the send relay's latest counters."""
    page_size = int(stats.get("memory_page_size", 4096) or 4096)
    pages = (relay_pages(relay) if relay is not None
             else PageCounts(zero=int(stats.get("memory_constant", 0)),
                             sent=int(stats.get("memory_normal", 0))))
    expected = stats.get("downtime")
    return MigrationSample(
        t=t,
        phase=phase,
        guest_rate_bytes_per_s=float(stats.get("memory_bps", 0) or 0),
        wan_rate_bytes_per_s=max(0.0, wan_rate),
        remaining_bytes=int(stats.get("memory_remaining", 0)),
        total_bytes=int(stats.get("memory_total", 0)),
        iteration=int(stats.get("memory_iteration", 0) or 0),
        dirty_rate_bytes_per_s=float(stats.get("memory_dirty_rate", 0) or 0) * page_size,
        pages=pages,
        expected_downtime_ms=float(expected) if expected is not None else None,
        disk_processed_bytes=int(stats.get("disk_processed", 0) or 0),
        disk_total_bytes=int(stats.get("disk_total", 0) or 0),
    )


def progress_line(s: MigrationSample, remaining_min: int | None) -> str:
    """The log line of a sample (in the style of `virsh migrate --verbose`), saying so when
    the remainder grew since its lowest point: the guest dirtied memory faster than it went.
    While libvirt copies the disks before the memory, the line says that instead."""
    if s.disk_total_bytes and not s.total_bytes:
        pct = 100.0 * s.disk_processed_bytes / s.disk_total_bytes
        return (f"storage migration active, copied {fmt_bytes(s.disk_processed_bytes)} of "
                f"{fmt_bytes(s.disk_total_bytes)} of the disks' writable layers "
                f"(WAN {fmt_bytes(s.wan_rate_bytes_per_s)}/s) [{pct:.0f}%]")
    done = s.total_bytes - s.remaining_bytes
    pct = 100.0 * done / s.total_bytes if s.total_bytes else 0.0
    line = (f"migration active, transferred {fmt_bytes(done)} of "
            f"{fmt_bytes(s.total_bytes)} VM-state, {fmt_bytes(s.guest_rate_bytes_per_s)}/s"
            f" (WAN {fmt_bytes(s.wan_rate_bytes_per_s)}/s)")
    if s.pages.teleported:
        line += f", {s.pages.teleported} pages teleported"
    if remaining_min is not None and s.remaining_bytes > remaining_min:
        line += (f" - remaining grew to {fmt_bytes(s.remaining_bytes)} "
                 f"(iteration {s.iteration}: the guest dirtied memory)")
    return f"{line} [{pct:.0f}%]"


class WanRate:
    """Bytes/s between successive readings of a WAN byte counter (each with its time); a
    reading that did not move on in time gives no new rate, never a spike."""

    def __init__(self, first: int | None, first_at: float) -> None:
        self.last, self.last_at = first, first_at

    def update(self, value: int | None, at: float) -> float:
        if value is None or at <= self.last_at:
            return 0.0
        rate = (value - self.last) / (at - self.last_at) if self.last is not None else 0.0
        self.last, self.last_at = value, at
        return rate


def final_counts(completed: dict, summary: events.Summary | None) -> tuple[int, PageCounts]:
    """(guest bytes, page counts) of a finished migration: libvirt's completed job stats,
    with the send relay's summary for what it teleported."""
    guest_bytes = int(completed.get("memory_processed", 0) or 0)
    if summary is not None:
        return guest_bytes or summary.counters.guest_bytes, relay_pages(summary)
    if completed:
        return guest_bytes, PageCounts(0, int(completed.get("memory_constant", 0)),
                                       int(completed.get("memory_normal", 0)))
    return guest_bytes, PageCounts()


def relay_cpu(send: events.Summary | None, recv: events.Summary | None) -> RelayCpu | None:
    """The relays' CPU seconds, and per GB of guest memory, from their summaries; None if
    either is missing or does not report its CPU (a relay from before it did)."""
    if send is None or recv is None or send.cpu_s <= 0 or recv.cpu_s <= 0:
        return None
    c = send.counters  # the stream's pages, as the source saw them
    memory = (c.pages_teleported + c.pages_zero + c.pages_sent) * PAGE_SIZE
    if memory <= 0:
        return None
    gb = memory / 1e9
    return RelayCpu(send_s=send.cpu_s, recv_s=recv.cpu_s, guest_memory_bytes=memory,
                    send_s_per_gb=round(send.cpu_s / gb, 3),
                    recv_s_per_gb=round(recv.cpu_s / gb, 3))


def migration_cpu(processes: list[ProcessCpu], missing: list[tuple[str, str]],
                  pages: PageCounts) -> MigrationCpu | None:
    """Each side's CPU summed over the processes measured there, and per GB of the guest
    memory the migration moved (its pages, as relay_cpu counts them). `missing`: (side, what
    could not be measured and why); that side then has no figures (None, never a partial
    sum), nor one that measured nothing. None if nothing was measured or missed."""
    if not processes and not missing:
        return None
    memory = (pages.teleported + pages.zero + pages.sent) * PAGE_SIZE

    def side(name: str) -> tuple[float | None, float | None]:
        mine = [p.cpu_s for p in processes if p.side == name]
        if not mine or any(s == name for s, _ in missing):
            return None, None
        total = round(sum(mine), 3)
        return total, round(total / (memory / 1e9), 3) if memory else None

    (send, send_gb), (recv, recv_gb) = side("source"), side("destination")
    return MigrationCpu(send_s=send, recv_s=recv, guest_memory_bytes=memory,
                        send_s_per_gb=send_gb, recv_s_per_gb=recv_gb, processes=processes,
                        missing=[f"{s}: {why}" for s, why in missing])


def split_wan(wan_bytes: int, memory_bytes: int, relay_wan_bytes: int | None,
              disk_processed: int = 0) -> tuple[int, int]:
    """(disk, memory) shares of the WAN bytes a migration sent (`wan_bytes`, counted on the
    source's WAN interface: both streams, with their TCP/IP and NBD headers).

    The memory stream is counted where it is written: teleport's send relay counts its frames
    on the WAN (`relay_wan_bytes`); for the other modes libvirt counts what QEMU wrote into the
    migration stream (jobStats `memory_processed`, `memory_bytes`: the stream itself, zstd's
    compressed packets for multifd). The disks' share is the rest: what QEMU's mirror sent over
    NBD, with the headers of both (a few per mille at the lab's 64000-byte MTU).

    libvirt's own disk count (`disk_processed`) is not a WAN count: it counts every byte the
    mirror processed, zero runs it writes as NBD zero requests too (measured on the lab: 14.7
    MiB processed for 1.7 MiB sent), so it is used only without an interface count."""
    memory = relay_wan_bytes if relay_wan_bytes is not None else memory_bytes
    if not wan_bytes:
        return disk_processed, memory
    memory = min(memory, wan_bytes)
    return wan_bytes - memory, memory


class Cadence:
    """When the progress sampler polls libvirt: one a second on a steady clock, the first
    after half a second. A poll that blocked (libvirt's job stats wait while a job cancels
    over a dead link: a minute with the disks in an IOThread) is followed by the next half a
    second after it returned, not at once by catch-up polls (two samples 10 ms apart)."""

    def __init__(self, start: float, first: float = 0.5) -> None:
        self.start, self.tick = start, first

    def due_in(self, now: float) -> float:
        """Seconds until the next poll is due (0: now)."""
        return max(0.0, self.start + self.tick - now)

    def polled(self, now: float) -> None:
        """A poll returned at `now`: the next one a second after this one was due, and at
        least half a second from now."""
        self.tick = max(self.tick + 1.0, now - self.start + 0.5)


class Stall:
    """How long a migration has moved no byte, disk or memory (libvirt's processed counters):
    a WAN that carries nothing leaves QEMU blocked in its socket and TCP retrying for many
    minutes, with the source running and the operator told nothing."""

    def __init__(self, now: float) -> None:
        self.moved, self.moved_at = -1, now

    def still_for(self, moved: int, now: float) -> float:
        """Seconds since the counters last grew, given their sum `moved` now."""
        if moved > self.moved:
            self.moved, self.moved_at = moved, now
        return now - self.moved_at


PER_GIB_S = 800.0  # how long a pass may go on not shrinking, per GiB of guest RAM


class Convergence:
    """Whether QEMU's passes over guest memory still shrink. Each pass starts with the pages
    the guest dirtied during the one before (libvirt's memory_remaining is highest at a
    pass's start and only falls within it); QEMU switches over once a pass's remainder fits
    its downtime limit at the rate it measures. A guest that dirties memory as fast as the
    migration sends it keeps every pass as big as the last: QEMU then copies for ever (the
    lab saw one run 12 minutes, 6 GiB for a 256 MiB guest) with the operator told nothing.

    Stuck: at least `min_passes` passes and `min_s` seconds into the memory copy, and the
    smallest pass of the last `window` is no smaller than `shrink` times the smallest before
    them. With auto-converge QEMU throttles the guest more each pass, so it gets more passes
    (`for_run`). Generous on purpose: a pass of a second or less is seen by one sample at
    most, and a guest whose passes hover near the limit converges when a pass is lucky (a
    soak on a loaded lab saw passes of 3.4 to 12 MiB against a limit near 3 MiB); Nova gives
    a small guest some 200 s (live_migration_completion_timeout) before it acts."""

    def __init__(self, min_passes: int = 12, window: int = 4, shrink: float = 0.8,
                 min_s: float = 180.0) -> None:
        self.min_passes, self.window, self.shrink, self.min_s = min_passes, window, shrink, min_s
        self.passes: dict[int, int] = {}  # pass number -> its largest remainder seen
        self.started_at: float | None = None

    @classmethod
    def for_run(cls, auto_converge: bool) -> Convergence:
        return cls(min_passes=30) if auto_converge else cls()

    def update(self, iteration: int, remaining: int, now: float) -> None:
        if iteration < 1:
            return  # the disks' copy, or no memory pass yet
        if self.started_at is None:
            self.started_at = now
        self.passes[iteration] = max(self.passes.get(iteration, 0), remaining)

    def stuck(self, now: float, ram_bytes: int = 0) -> bool:
        """`ram_bytes`: the guest's RAM; a bigger guest gets longer, as Nova gives it 800 s
        per GiB (live_migration_completion_timeout), never less than `min_s`."""
        wait = max(self.min_s, PER_GIB_S * ram_bytes / 2**30)
        if self.started_at is None or now - self.started_at < wait or not self.passes:
            return False
        recent, earlier = self._split()
        if max(self.passes) < self.min_passes or not recent or not earlier:
            return False
        return min(recent) >= self.shrink * min(earlier)

    def typical_pass(self) -> int:
        """The size of the recent passes (for the message)."""
        recent, _ = self._split()
        return min(recent) if recent else 0

    def _split(self) -> tuple[list[int], list[int]]:
        """The last `window` passes' sizes, and those before them."""
        last = max(self.passes, default=0)
        recent = [v for n, v in self.passes.items() if n > last - self.window]
        earlier = [v for n, v in self.passes.items() if n <= last - self.window]
        return recent, earlier


class DiskConvergence:
    """Whether the disks' copy can ever be in sync. libvirt starts the memory only once every
    mirror is; a guest that writes its disks (amplified: the mirror copies whole granules)
    as fast as the WAN carries the copy keeps it at 99 % for ever. tpcc on the default WAN
    copied 7.4 GiB in 11 minutes for writable layers of 2.2 GiB, with the operator told
    nothing. Stuck: `min_s` seconds into the copy, and `factor` times what the layers held at
    its start copied, the memory not begun."""

    def __init__(self, min_s: float = 300.0, factor: float = 3.0) -> None:
        self.min_s, self.factor = min_s, factor
        self.started_at: float | None = None
        self.first_total = 0  # what the copy had to move when it was first seen

    def stuck(self, s: MigrationSample, now: float) -> bool:
        if s.total_bytes or not s.disk_total_bytes:
            return False  # the memory copy began (the disks were in sync), or no disk copy
        if self.started_at is None:
            self.started_at, self.first_total = now, s.disk_total_bytes
        return (now - self.started_at >= self.min_s
                and s.disk_processed_bytes >= self.factor * self.first_total)

    def why(self, s: MigrationSample, now: float) -> str:
        took = now - (self.started_at or now)
        return (f"disks not converging: in {took:.0f} s the storage copy moved "
                f"{fmt_bytes(s.disk_processed_bytes)} for writable layers that held "
                f"{fmt_bytes(self.first_total)} at its start; the guest writes its disks about "
                "as fast as the WAN carries the copy, and the memory starts only once they are "
                "in sync; the migration was abandoned (a higher bandwidth or a quieter moment "
                "helps)")


def not_converging(s: MigrationSample, conv: Convergence, auto_converge: bool) -> str:
    """Why a migration that never converged was abandoned, and what the operator can do."""
    rates = (f"it writes {fmt_bytes(s.dirty_rate_bytes_per_s)}/s, the migration moves "
             f"{fmt_bytes(s.guest_rate_bytes_per_s)}/s")
    hint = ("even with auto-converge slowing the guest; a higher bandwidth or a quieter "
            "moment helps" if auto_converge else
            "--auto-converge slows the guest until it fits; a higher bandwidth or a quieter "
            "moment helps")
    return (f"not converging: after {s.iteration} passes over its memory the guest still "
            f"dirtied {fmt_bytes(conv.typical_pass())} between passes ({rates}), too much for "
            f"the switch-over; the migration was abandoned ({hint})")
