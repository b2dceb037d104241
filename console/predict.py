"""Predicted WAN bytes and total time per mode, and the physical limit T_min, from what was
measured just before the start (records.PredictionInputs: a fresh composition and map, a zstd
sample of guest RAM, the guest's dirty rate, the WAN's goodput and RTT, the disks' overlays).

Pure functions, so the migrate dialog, `migrate --dry-run`, the records and the benchmark agree
on one estimate and a test can pin it. The model is QEMU precopy over a link:

* round 1 sends every non-zero page (zero pages cost a short record); the share of zero pages
  is measured on a sample of guest RAM, not guessed from MemFree (freed pages keep old bytes);
* each page costs, by mode: a page record (stock, drop-cache), its zstd size as sampled (zstd;
  teleport's relay compresses the pages it sends whole the same way), or a reference
  (teleport, pages the fresh map names);
* QEMU then resends what the guest wrote meanwhile: the pages written in a window, at the
  measured dirty rate, where a write to a page already written adds nothing (`dirtied`), so
  a long round finds fewer than rate x time; it syncs after each round, or every 5 s once
  auto-converge runs (QEMU >= 9.2), and is done when what is left fits the downtime limit at
  the link's rate in guest bytes; auto-converge throttles the vCPUs by QEMU's steps (20 %,
  then +10 % every second sync period that dirtied more than half of what QEMU sent);
* drop-cache turns the clean cache into zero pages, but the workload reads its files again
  while the migration runs (`reread_share` of the clean cache): round 1 finds those pages
  full again, and they are dirtied after it passed them, so they cross twice (web: drop-cache
  sent 1.56x stock's pages); before that the guest spent `drop_s` dropping and zeroing;
* the disks' overlays cross first (libvirt's NBD mirror: at the link's rate, after
  `disk_setup_s` to start the NBD server and the mirror jobs), then the mirror carries the
  guest's disk writes (measured before the start) beside the memory stream: whole granules
  in the background, each write once when they are synchronous (with auto-converge);
* time is the WAN bytes over the goodput, or the relay's / zstd's CPU rate when that is lower,
  plus the map (teleport), setup and the switch-over.

T_min is the bound no mode can beat: the bytes that must cross (non-zero pages no map names,
compressed as well as the sample says; the zero pages' records; the overlays; what the guest
dirties meanwhile) over the goodput, plus a few RTTs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pcteleport.engine import version_tuple
from pcteleport.records import (
    PAGE_SIZE,
    Composition,
    MigrationRecord,
    Mode,
    ModePrediction,
    PredictionInputs,
)

PAGE_RECORD_BYTES = PAGE_SIZE + 8  # be64 offset|flags, then the page
ZERO_RECORD_BYTES = 9  # be64 offset|flags, then one fill byte
#: QEMU keeps iterating; past either a migration that does not converge is stuck
MAX_PRECOPY_S = 3600.0
MAX_SYNCS = 2000
#: QEMU's auto-converge (migration/ram.c, cpu-throttle.c): a sync period that dirtied more
#: than this share of the bytes QEMU sent is high; every second high one throttles the vCPUs
THROTTLE_TRIGGER = 0.5
THROTTLE_INITIAL = 0.2
THROTTLE_STEP = 0.1
THROTTLE_MAX = 0.99
#: QEMU 9.2 and later sync the dirty bitmap every 5 s once auto-converge is on (after round
#: 1), so the throttle is raised within a long round: tpcc's iterations came every 5 s
PERIODIC_SYNC_S = 5.0
PERIODIC_SYNC_QEMU = (9, 2, 0)
QEMU_DOWNTIME_MS = 300.0  # QEMU's own downtime limit when none was set


@dataclass(frozen=True)
class PredictionModel:
    """Constants that are not measured before the start: defaults from the lab's bench runs
    (docs/results.md, "Predictions")."""

    free_zero_fraction: float = 1.0  # without a RAM sample: share of MemFree that is zero
    zstd_ratio: float = 0.30  # without a sample: compressed / raw size of non-zero pages
    # Fitted: the phases of web-default-141622 (the only web run with inputs; docs/results.md,
    # "Predictions and T_min", says which figures were checked on runs not used for this).
    zstd_bytes_per_s: float = 150e6  # guest bytes multifd zstd compresses per second
    teleport_ref_bytes: int = 12  # WAN bytes of one teleported page (offset + hash, zstd'd)
    zero_wan_bytes: float = 1.0  # WAN bytes of a zero page in a compressed stream
    #: guest bytes (sent whole or teleported) the send relay gets through per second: web's
    #: teleport round 1 in the four runs since 2026-11-30 21:00, 101-171 MB/s, median 132
    #: (fitted; it was 104 before the encoder's second round)
    relay_bytes_per_s: float = 130e6
    goodput_share: float = 0.998  # of the link rate, what TCP carries (the lab's counters)
    #: drop-cache: share of the clean cache the workload reads again during the migration
    #: (fitted on the five drop-cache runs since synchronous writes and TLS, web 024252,
    #: 031519 twice, 034044 and tpcc 025144: -5/-4, -0/-0, +3/+5, +11/+11, -10/-12 % bytes/
    #: time at 0.8; 1.0, which web-default-141622 had given, +13 to +33 % on web)
    reread_share: float = 0.8
    #: the disks' mirror sends this many bytes per byte the guest writes: it copies the
    #: granules (64 KiB) a write dirtied (fitted: tpcc-default-232108's stock and teleport
    #: mirrored 5.7 and 3.7 MB/s of writes until in sync, after 0.56 and 0.52 MB/s measured)
    mirror_write_amplification: float = 8.6
    #: synchronous writes (auto-converge) cross once: tpcc-default-001407's stock and zstd
    #: mirrored 0.40 and 0.25 MB/s beyond the overlays after 0.56 MB/s measured (the guest,
    #: throttled, wrote less)
    mirror_sync_write_amplification: float = 1.0
    drop_s: float = 2.0  # drop-cache: the guest's sync and drop, before zeroing
    #: drop-cache: how fast a TCG guest zeroes its free memory (the median of 24 drop-cache
    #: runs, free and clean cache over the drop less drop_s: 24-136 MB/s by the machine's load;
    #: it was the slowest of them, 23.5, before)
    zero_bytes_per_s: float = 60e6
    #: the disks' mirror: NBD server, blockdev-mirror jobs until they copy (fitted: request
    #: to the first memory byte, less the overlay at the link's rate, less setup: the median
    #: of the 24 runs since 2026-11-30 21:00 is 4.0 s, web 2.0-5.7, tpcc 8-16; it was 2.7,
    #: from web-default-141622 alone)
    disk_setup_s: float = 1.8
    #: QEMU's single migration stream (stock, drop-cache) after the disks' mirror runs one TCP
    #: window per RTT for this long before it opens up (fitted: web stock's first second)
    stream_window_bytes: int = 64 * 1024
    stream_slow_s: float = 1.0
    #: libvirt begin/prepare/perform, destination QEMU start (fitted: the prepare phase,
    #: 1.8-2.4 s, less setup_rtts)
    setup_s: float = 1.75
    #: stop-and-copy's device state and the resume; the remainder itself is counted at the
    #: link's rate (the median switch-over of the 24 runs since 2026-11-30 21:00: teleport's,
    #: whose remainder is small, 0.45-1.14 s, median 0.52; stock's 1.3 with its remainder;
    #: it was 1.45, the mean of web-default-141622's four modes)
    switchover_s: float = 0.5
    setup_rtts: int = 8  # protocol round trips (libvirt, TCP, QEMU)
    tmin_rtts: int = 3  # T_min: connect, the last round's acknowledgement, resume


DEFAULT_MODEL = PredictionModel()


# --- what a page costs ---------------------------------------------------------------------


@dataclass(frozen=True)
class Pages:
    """Guest RAM in pages, as the inputs describe it."""

    total: int
    zero: int
    restorable: int  # non-zero pages the fresh map names, less those written since the base
    clean: int  # the guest's clean page cache, in pages
    named: int = 0  # non-zero pages the fresh map names

    @property
    def nonzero(self) -> int:
        return self.total - self.zero


def pages_of(inp: PredictionInputs, model: PredictionModel = DEFAULT_MODEL) -> Pages:
    c = inp.composition or Composition(total=inp.ram_bytes)
    total = max(inp.ram_bytes, c.total) // PAGE_SIZE
    if inp.zero_fraction is not None:
        zero = int(total * inp.zero_fraction)
    else:
        zero = int(max(0, c.free) // PAGE_SIZE * model.free_zero_fraction)
    zero = min(zero, total)
    named = inp.restorable_bytes if inp.restorable_bytes is not None else c.restorable
    # pages the maps name over blocks written since the base cross whole (tpcc: 118,697 of
    # the 185,870 its teleport sent whole)
    restorable = int(max(0, named) * (1.0 - (inp.map_written_share or 0.0)))
    restorable_pages = min(restorable // PAGE_SIZE, total - zero)
    return Pages(total, zero, restorable_pages, max(0, c.cache_clean) // PAGE_SIZE,
                 min(max(0, named) // PAGE_SIZE, total - zero))


def goodput(inp: PredictionInputs, model: PredictionModel = DEFAULT_MODEL) -> float | None:
    """Bytes/s the migration gets: the measured goodput, never above the cap or the profile's
    rate (a goodput taken from runs on a faster link must not make this one look fast)."""
    rates = [r for r in (inp.link_rate_bytes_per_s, inp.cap_bytes_per_s,
                         inp.profile_rate_bytes_per_s) if r]
    return min(rates) * model.goodput_share if inp.link_rate_bytes_per_s and rates else None


def _ratios(inp: PredictionInputs, model: PredictionModel) -> tuple[float, float]:
    whole = inp.zstd_ratio if inp.zstd_ratio is not None else model.zstd_ratio
    rest = inp.zstd_ratio_rest if inp.zstd_ratio_rest is not None else whole
    return whole, rest


def disk_wan(inp: PredictionInputs) -> int:
    return inp.disk_overlay_bytes + inp.disks_whole_bytes


def mirror_writes(inp: PredictionInputs, rate: float,
                  model: PredictionModel = DEFAULT_MODEL) -> float:
    """Bytes/s the disks' mirror sends for the guest's writes while it runs: what the guest
    wrote, times the mirror's amplification (in the background it copies the whole granules
    a write dirtied; with auto-converge the writes are synchronous, see
    sites/libvirt/migration/storage.py, and each crosses once), at most 90 % of the link."""
    amplification = (model.mirror_sync_write_amplification if inp.auto_converge
                     else model.mirror_write_amplification)
    return min((inp.disk_write_bytes_per_s or 0.0) * amplification, 0.9 * rate)


def periodic_sync(qemu_version: str) -> bool:
    """QEMU syncs its dirty bitmap every 5 s under auto-converge (9.2 and later; a version not
    known is taken as the lab's, which has it)."""
    try:
        return not qemu_version or version_tuple(qemu_version) >= PERIODIC_SYNC_QEMU
    except ValueError:
        return True


def disk_seconds(inp: PredictionInputs, rate: float,
                 model: PredictionModel = DEFAULT_MODEL) -> float:
    """The NBD mirror until it is in sync: its start, then the overlays at the link's rate
    less what the guest's writes add meanwhile (no per-RTT bound: tpcc's 830 MB of overlay
    crossed at 11.4 MB/s over a 50 ms RTT)."""
    b = disk_wan(inp)
    return model.disk_setup_s + b / (rate - mirror_writes(inp, rate, model)) if b > 0 else 0.0


# --- precopy -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Precopy:
    wan_bytes: float
    seconds: float  # on the WAN (or CPU-bound), first round to the end of stop-and-copy
    rounds: int  # dirty-bitmap syncs: QEMU's iterations
    converges: bool


@dataclass(frozen=True)
class Stream:
    """How one mode's stream carries pages: round 1 (every page once), a page resent later
    on the WAN, and as QEMU counts it on its own socket (auto-converge compares the pages
    dirtied with those bytes: zstd's compressed bytes, the raw pages it hands teleport's
    relay)."""

    first_wan: float
    first_qemu: float
    page_wan: float
    page_qemu: float


def dirtied(pages_per_s: float, span: int, seconds: float) -> float:
    """Distinct pages a guest has written after `seconds`, writing `pages_per_s` (as measured
    over a few seconds) over `span` pages: a write to a page already written adds nothing, so
    a long round sees fewer than rate x time (tpcc: 883 MB of its 1 GiB in an 86 s round 1, at
    18-22 MB/s measured)."""
    if span <= 0 or pages_per_s <= 0 or seconds <= 0:
        return 0.0
    return span * -math.expm1(-pages_per_s * seconds / span)


def _throttled(throttle: float) -> float:
    return THROTTLE_INITIAL if throttle == 0 else min(THROTTLE_MAX, throttle + THROTTLE_STEP)


def precopy(stream: Stream, dirty_pages_per_s: float, span: int, rate: float,
            downtime_s: float, auto_converge: bool, periodic_sync: bool = True,
            first_extra: float = 0.0, min_round_s: float = 0.0) -> Precopy:
    """QEMU's precopy, sync by sync. Round 1 sends `stream.first_wan` (never faster than
    `min_round_s`, a CPU bound); at its end every page written meanwhile is pending, at least
    `first_extra` (drop-cache's re-reads: the refill of the dropped cache is what the guest's
    measured dirtying, cache turnover, mostly is, so the larger of the two counts, not both).
    Then QEMU sends what is pending and syncs again: after the whole round, or every 5 s once
    auto-converge runs on a QEMU that has its periodic sync. At each sync a period that
    dirtied more than half of what QEMU sent counts as high, and every second one throttles
    the vCPUs a step.
    Done when what is pending fits the downtime limit at the link's rate in guest bytes."""
    t = max(stream.first_wan / rate, min_round_s)
    sent = stream.first_wan
    pages_per_s = rate / stream.page_wan
    # QEMU's switch-over threshold is its bandwidth x the limit, in guest bytes: zstd's is
    # in compressed bytes and teleport's is told the WAN's rate (switchover.py), so for every
    # mode it is the link's rate in raw pages: compression does not widen it
    fits = rate * downtime_s / PAGE_SIZE
    pending = min(max(dirtied(dirty_pages_per_s, span, t), first_extra), float(span))
    throttle, high = 0.0, 0
    if auto_converge and pending * PAGE_SIZE > THROTTLE_TRIGGER * stream.first_qemu:
        high = 1
    syncs = 1
    while t < MAX_PRECOPY_S and syncs < MAX_SYNCS:
        if pending <= fits:  # stop-and-copy
            last = pending * stream.page_wan
            return Precopy(sent + last, t + last / rate, syncs + 1, True)
        n = pending
        if auto_converge and periodic_sync:
            n = min(pending, pages_per_s * PERIODIC_SYNC_S)
        dt = n / pages_per_s
        # pages still pending when the guest writes them again add nothing
        new = dirtied(dirty_pages_per_s * (1.0 - throttle), span, dt) * \
            max(0.0, 1.0 - (pending - n) / span)
        pending = min(pending - n + new, float(span))
        sent += n * stream.page_wan
        t += dt
        syncs += 1
        if auto_converge and new * PAGE_SIZE > THROTTLE_TRIGGER * n * stream.page_qemu:
            high += 1
            if high >= 2:
                high, throttle = 0, _throttled(throttle)
    return Precopy(sent, t, syncs, False)


def _mapped_ratio(p: Pages, ratio_all: float, ratio_rest: float) -> float:
    """zstd's ratio on the pages the maps name, from the sample's ratio on every non-zero
    page and on those no map names."""
    named = min(p.named, p.nonzero)
    if named <= 0:
        return ratio_all
    r = (ratio_all * p.nonzero - ratio_rest * (p.nonzero - named)) / named
    return min(1.0, max(0.05, r))


def stale_pages(inp: PredictionInputs, p: Pages, ratio_rest: float,
                model: PredictionModel = DEFAULT_MODEL) -> int:
    """Mapped pages the guest rewrites before round 1 sends them: their bytes no longer match
    the disk's, so the relay sends them whole. The maps are refreshed all along, each taking
    `map_s`, so a page goes against a map about that old, plus half of round 1 (tpcc at
    25 MB/s with 11 s maps: the relay refused 55 % of the mapped pages of round 1; the sample
    had found 11 % written since the base)."""
    rate = goodput(inp, model)
    dirty = (inp.dirty_rate_bytes_per_s or 0.0) / PAGE_SIZE
    if not rate or not dirty or not p.restorable:
        return 0
    stale = 0.0
    for _ in range(2):  # round 1's length depends on how many go whole
        whole = p.nonzero - p.restorable + stale
        round1 = max((whole * PAGE_SIZE * ratio_rest + (p.restorable - stale)
                      * model.teleport_ref_bytes) / rate,
                     p.nonzero * PAGE_SIZE / model.relay_bytes_per_s)
        age = (inp.map_s or 0.0) + round1 / 2
        stale = p.restorable * dirtied(dirty, p.total, age) / p.total
    return int(stale)


def predict(inp: PredictionInputs, mode: Mode,
            model: PredictionModel = DEFAULT_MODEL) -> ModePrediction:
    p = pages_of(inp, model)
    ratio_all, ratio_rest = _ratios(inp, model)
    zero, nonzero, teleported = p.zero, p.nonzero, 0
    reread = 0
    if mode is Mode.DROP_CACHE:
        dropped = min(p.clean, nonzero)
        reread = int(dropped * model.reread_share)
        # re-read pages are data again when round 1 reaches them, and dirtied after it passed
        # them (first_extra below): they cross twice
        zero, nonzero = zero + dropped - reread, nonzero - dropped + reread
    elif mode is Mode.TELEPORT:
        teleported = p.restorable - stale_pages(inp, p, ratio_rest, model)
        nonzero -= teleported
    if mode in (Mode.ZSTD, Mode.TELEPORT):
        # teleport: a page resent after round 1 is any page the guest wrote, as compressible
        # as RAM at large
        page_wan, zero_wan = PAGE_SIZE * ratio_all, model.zero_wan_bytes
    else:
        page_wan, zero_wan = float(PAGE_RECORD_BYTES), float(ZERO_RECORD_BYTES)
    whole_wan = nonzero * page_wan
    if mode is Mode.TELEPORT:
        # teleport's pages sent whole: those no map names, compressed as the sample says, and
        # the mapped ones it could not use (written since the base, rewritten since the map),
        # which are cache pages and compress as those do (tpcc: 0.45 against 0.24 for the rest)
        named_whole = max(0, min(p.named, p.nonzero) - teleported)
        whole_wan = (nonzero - named_whole) * PAGE_SIZE * ratio_rest + \
            named_whole * PAGE_SIZE * _mapped_ratio(p, ratio_all, ratio_rest)
    first = whole_wan + zero * zero_wan + teleported * model.teleport_ref_bytes
    # what QEMU itself writes: teleport's relay gets every page whole, zstd is compressed
    page_qemu = float(PAGE_RECORD_BYTES) if mode is Mode.TELEPORT else page_wan
    first_qemu = first if mode is not Mode.TELEPORT else \
        (nonzero + teleported) * page_qemu + zero * ZERO_RECORD_BYTES

    disk = disk_wan(inp)
    rate = goodput(inp, model)
    dirty = (inp.dirty_rate_bytes_per_s or 0.0) / PAGE_SIZE
    downtime_s = (inp.max_downtime_ms or QEMU_DOWNTIME_MS) / 1000.0
    # CPU bounds of a round: zstd compresses every non-zero page, the relay encodes them
    cpu_s = 0.0
    if mode is Mode.ZSTD:
        cpu_s = nonzero * PAGE_SIZE / model.zstd_bytes_per_s
    elif mode is Mode.TELEPORT:
        cpu_s = (nonzero + teleported) * PAGE_SIZE / model.relay_bytes_per_s
    if not rate:
        # No rate: bytes of one pass and what was dirtied is unknown; say so with None.
        return ModePrediction(mode, int(first + disk), None, int(first), disk, True, 1)
    # the mirror sends the guest's disk writes until it is in sync and while memory goes:
    # they share the link
    writes = mirror_writes(inp, rate, model)
    run = precopy(Stream(first, first_qemu, page_wan, page_qemu), dirty, p.total,
                  rate - writes, downtime_s, inp.auto_converge,
                  periodic_sync=periodic_sync(inp.qemu_version), first_extra=reread,
                  min_round_s=cpu_s)
    mirror_s = disk_seconds(inp, rate, model)
    disk += int(writes * (run.seconds + max(0.0, mirror_s - model.disk_setup_s)))
    seconds = run.seconds + mirror_s
    seconds += model.setup_s + model.switchover_s + model.setup_rtts * (inp.rtt_ms or 0) / 1e3
    if mode in (Mode.STOCK, Mode.DROP_CACHE) and disk and model.stream_slow_s:
        rtt = (inp.rtt_ms or 0.0) / 1000.0
        slow_rate = model.stream_window_bytes / rtt if rtt else rate
        if slow_rate < rate:  # the bytes it sent slowly took this much longer
            seconds += model.stream_slow_s * (1.0 - slow_rate / rate)
    if mode is Mode.TELEPORT:
        # the map is taken while libvirt prepares and the disks mirror; the send relay holds
        # QEMU's stream until it has it
        seconds += max(0.0, (inp.map_s or 0.0) - model.setup_s - mirror_s)
    if mode is Mode.DROP_CACHE:
        free = (inp.composition.free if inp.composition else 0) + p.clean * PAGE_SIZE
        seconds += model.drop_s + free / model.zero_bytes_per_s
    return ModePrediction(mode, int(run.wan_bytes + disk), seconds, int(run.wan_bytes), disk,
                          run.converges, run.rounds)


def predict_all(inp: PredictionInputs,
                model: PredictionModel = DEFAULT_MODEL) -> list[ModePrediction]:
    return [predict(inp, mode, model) for mode in Mode]


def must_cross_bytes(inp: PredictionInputs, model: PredictionModel = DEFAULT_MODEL) -> float:
    """The bytes no mode can avoid sending: non-zero pages no map names, compressed as well as
    the sample says, the zero pages' records and the disks' overlays."""
    p = pages_of(inp, model)
    _, rest = _ratios(inp, model)
    return ((p.nonzero - p.restorable) * PAGE_SIZE * rest + p.zero * model.zero_wan_bytes
            + p.restorable * model.teleport_ref_bytes + disk_wan(inp))


def t_min(inp: PredictionInputs, model: PredictionModel = DEFAULT_MODEL) -> float | None:
    """Seconds: the disks' overlays over the goodput (the memory waits for them, so the guest's
    dirtying costs nothing meanwhile), then the memory that must cross over what the goodput
    leaves beside the guest's dirtying at the same cost per page, plus a few RTTs. None
    without a link rate, or when the guest dirties faster than the link can carry even at
    that cost (no precopy bound)."""
    rate = goodput(inp, model)
    if not rate:
        return None
    _, rest = _ratios(inp, model)
    dirty_wan = (inp.dirty_rate_bytes_per_s or 0.0) * rest
    if dirty_wan >= rate:
        return None
    disks = disk_wan(inp)
    return disks / rate + (must_cross_bytes(inp, model) - disks) / (rate - dirty_wan) + \
        model.tmin_rtts * (inp.rtt_ms or 0.0) / 1000.0


def caveats(inp: PredictionInputs) -> list[str]:
    """What the inputs cannot see, in words for the operator beside the prediction."""
    out = []
    if inp.dirty_rate_method == "page-sampling":
        # QEMU's dirty-bitmap measurement counts only KVM's dirty log (0 on a TCG guest);
        # sampling hashes pages: a page rewritten with the bytes it held looks clean, though
        # QEMU's migration bitmap resends it (web stock: 54 s, or 263 s hovering at the
        # downtime limit, from the same inputs: docs/results.md)
        out.append("dirty rate by page sampling: rewrites of the same bytes are not seen, so "
                   "a guest busy reading its cache may take longer to converge than predicted")
    return out


def inputs_from_composition(composition: Composition, link_bytes_per_s: float | None,
                            rtt_ms: float | None = None, cap_bytes_per_s: float | None = None,
                            ram_bytes: int | None = None) -> PredictionInputs:
    """Inputs when only a composition is known (an older record, a replay): no sample, no
    dirty rate, no map but the composition's restorable figure."""
    return PredictionInputs(ram_bytes=ram_bytes or composition.total, composition=composition,
                            link_rate_bytes_per_s=link_bytes_per_s, rtt_ms=rtt_ms,
                            cap_bytes_per_s=cap_bytes_per_s)


def keep_prediction(record: MigrationRecord, inputs: PredictionInputs,
                    model: PredictionModel = DEFAULT_MODEL) -> None:
    """The record keeps what was predicted for its mode, and T_min, beside what it measured."""
    record.prediction_inputs = inputs
    record.prediction = predict(inputs, record.mode, model)
    record.t_min_s = t_min(inputs, model)
