"""Per-second workload timelines around one migration, and what they say: the level before,
during and after, the deepest dip after the VM resumed, and how long until it recovered.

Times are seconds since the migration started (host clock); a guest row {"t": second start, ...}
is moved onto the host clock with the guest-to-host offset measured at the site it ran at."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

RECOVERED_SHARE = 0.8  # back to 80 % of the level before the migration ...
RECOVERED_FOR_S = 3  # ... for this many consecutive seconds
DIP_WINDOW_S = 10  # the dip is the lowest second within this long after the resume


@dataclass
class Point:
    t: float  # start of the one-second bucket, seconds since the migration started
    value: float


def to_points(rows: list[dict[str, Any]], key: str, t0_host: float, offset_before: float,
              offset_after: float, switch_host: float) -> list[Point]:
    """Rows of one guest counter as points on the host clock. Rows whose host time (with the
    source's offset) falls before `switch_host` (when the VM paused for the stop-and-copy) use
    `offset_before`, later ones `offset_after` (the guest clock stood still while paused). The first
    and the last row cover part of a second only, so they are left out."""
    out = []
    for row in rows[1:-1]:
        t_guest = float(row["t"])
        offset = offset_before if t_guest + offset_before < switch_host else offset_after
        out.append(Point(t_guest + offset - t0_host, float(row.get(key, 0.0))))
    return out


@dataclass
class Summary:
    baseline: float | None  # median per second before the migration
    during: float | None  # mean per second while it ran, as a share of the baseline
    after: float | None  # mean per second after the resume, as a share of the baseline
    dip: float | None  # lowest second within DIP_WINDOW_S of the resume, share of baseline
    recovered_s: float | None  # from the resume until back to RECOVERED_SHARE; None: never
    # Seconds below RECOVERED_SHARE from the migration's start on, wherever the dip is: a cache
    # dropped before the migration degrades reads while it runs, not only after the resume.
    degraded_s: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return dict(self.__dict__)


def summarise(points: list[Point], resume_t: float) -> Summary:
    before = [p.value for p in points if p.t + 1 <= 0]
    if not before or statistics.median(before) <= 0:
        return Summary(None, None, None, None, None, None)
    base = statistics.median(before)
    during = [p.value for p in points if p.t >= 0 and p.t + 1 <= resume_t]
    after_pts = [p for p in points if p.t >= resume_t]
    dip_pts = [p.value for p in after_pts if p.t < resume_t + DIP_WINDOW_S]
    # The bucket the VM resumed in is cut by the pause: include it in the dip only, not the
    # recovery search start, which begins at the first bucket that started after the resume.
    around = [p.value for p in points if p.t < resume_t < p.t + 1]
    recovered = None
    for i, p in enumerate(after_pts):
        window = after_pts[i:i + RECOVERED_FOR_S]
        if len(window) == RECOVERED_FOR_S and all(
                w.value >= RECOVERED_SHARE * base for w in window):
            recovered = round(p.t - resume_t, 1)
            break
    dips = dip_pts + around
    degraded = sum(1 for p in points if p.t >= 0 and p.value < RECOVERED_SHARE * base)
    return Summary(
        baseline=base,
        during=statistics.fmean(during) / base if during else None,
        after=statistics.fmean(p.value for p in after_pts) / base if after_pts else None,
        dip=min(dips) / base if dips else None,
        recovered_s=recovered,
        degraded_s=float(degraded),
    )
