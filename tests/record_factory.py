"""Migration records that tests construct (not lab recordings: those come from real runs)."""

from __future__ import annotations

from pcteleport.records import (
    Composition,
    CompositionSource,
    LogLine,
    MigrationRecord,
    MigrationSample,
    Mode,
    PageCounts,
    Phase,
    PhaseMark,
    Result,
    Throughput,
    WanLink,
    log_stamp,
)

MIB = 2**20
GIB = 2**30


def constructed_run(mode: Mode = Mode.TELEPORT, vm: str = "web", run_id: str = "t1",
                    seconds: int = 4, wan_bytes: int = 140 * MIB, downtime_ms: float = 300.0,
                    started_at: float = 1_764_000_000.0, result: Result = Result.OK,
                    throughput: float | None = 5200.0) -> MigrationRecord:
    total = GIB
    r = MigrationRecord(
        run_id=run_id, vm=vm, vm_uuid=f"uuid-{vm}", from_site="tokyo", to_site="osaka",
        mode=mode, started_at=started_at,
        wan=WanLink(peer="osaka", profile="100mbit-50ms", rate_bytes_per_s=11.8e6, rtt_ms=50.3),
        composition=Composition(total=total, free=300 * MIB, anon=200 * MIB, kernel=60 * MIB,
                                cache_clean=456 * MIB, cache_dirty=8 * MIB, restorable=400 * MIB,
                                source=CompositionSource.MODULE))
    r.phases = [PhaseMark(Phase.PREPARE, 0.0), PhaseMark(Phase.MAP, 0.2),
                PhaseMark(Phase.ITERATIVE, 0.5, 1)]
    remaining = total
    for i in range(1, seconds + 1):
        remaining = max(0, remaining - total // seconds)
        pages = PageCounts(teleported=i * 25_000, zero=i * 18_000, sent=i * 8_000)
        r.samples.append(MigrationSample(
            t=float(i), phase=Phase.ITERATIVE, guest_rate_bytes_per_s=total / seconds,
            wan_rate_bytes_per_s=11.5e6, remaining_bytes=remaining, total_bytes=total,
            iteration=1, dirty_rate_bytes_per_s=2 * MIB, pages=pages,
            expected_downtime_ms=downtime_ms + 20))
        r.log.append(LogLine(float(i), f"{log_stamp(started_at + i)} migration active, "
                                       f"remaining {remaining // MIB} MiB"))
    end = float(seconds) + 0.5
    r.phases += [PhaseMark(Phase.STOP_AND_COPY, end - 0.4), PhaseMark(Phase.RESUME, end - 0.1),
                 PhaseMark(Phase.DONE, end)]
    r.log.append(LogLine(end, f"{log_stamp(started_at + end)} migration finished successfully"))
    r.result, r.total_s, r.downtime_ms = result, end, downtime_ms
    r.wan_bytes, r.guest_bytes = wan_bytes, total
    r.pages = r.samples[-1].pages if r.samples else PageCounts()
    if throughput is not None:
        r.throughput_after = Throughput(throughput, "blocks/s", recovered_s=3.0)
    return r
