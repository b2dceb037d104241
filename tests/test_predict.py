"""The prediction model (pcteleport.predict): pure functions over measured inputs."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pcteleport.predict import (
    PAGE_RECORD_BYTES,
    ZERO_RECORD_BYTES,
    PredictionModel,
    Stream,
    caveats,
    dirtied,
    keep_prediction,
    mirror_writes,
    must_cross_bytes,
    pages_of,
    periodic_sync,
    precopy,
    predict,
    predict_all,
    stale_pages,
    t_min,
)
from pcteleport.records import PAGE_SIZE, Composition, Mode, PredictionInputs
from tests.record_factory import constructed_run

MIB = 2**20
GIB = 2**30
NO_OVERHEAD = PredictionModel(setup_s=0, switchover_s=0, setup_rtts=0, tmin_rtts=0,
                              goodput_share=1.0, disk_setup_s=0, stream_slow_s=0)


def comp(restorable: int = 300 * MIB, clean: int = 400 * MIB, free: int = 300 * MIB,
         anon: int = 300 * MIB) -> Composition:
    return Composition(total=free + anon + clean + 24 * MIB, free=free, anon=anon,
                       kernel=24 * MIB, cache_clean=clean, restorable=restorable)


def inputs(**kw: object) -> PredictionInputs:
    base: dict[str, object] = dict(
        ram_bytes=GIB, composition=comp(), restorable_bytes=300 * MIB, zero_fraction=0.25,
        zstd_ratio=0.3, zstd_ratio_rest=0.4, dirty_rate_bytes_per_s=0.0,
        link_rate_bytes_per_s=12.5e6, rtt_ms=50.0, max_downtime_ms=1000.0)
    base.update(kw)
    return PredictionInputs(**base)  # type: ignore[arg-type]


def test_stock_sends_every_non_zero_page_as_a_page_record_and_zero_pages_as_records() -> None:
    inp = inputs(link_rate_bytes_per_s=None)
    p = predict(inp, Mode.STOCK)
    pages = GIB // PAGE_SIZE
    zero = int(pages * 0.25)
    assert p.wan_bytes == (pages - zero) * PAGE_RECORD_BYTES + zero * ZERO_RECORD_BYTES
    assert p.total_s is None  # unknown link rate: no time


def test_the_sampled_zero_share_wins_over_memfree() -> None:
    # MemFree says 300 MiB, but the sample found half of RAM zero: freed pages keep old bytes
    # only sometimes, the sample is what QEMU will see
    a = predict(inputs(zero_fraction=0.5), Mode.STOCK)
    b = predict(inputs(zero_fraction=None), Mode.STOCK)
    assert pages_of(inputs(zero_fraction=None)).zero == 300 * MIB // PAGE_SIZE
    assert a.wan_bytes < b.wan_bytes


def test_teleport_sends_the_rest_compressed_as_sampled_and_a_reference_per_mapped_page() -> None:
    model = PredictionModel(teleport_ref_bytes=16, zero_wan_bytes=1.0)
    inp = inputs()
    p = predict(inp, Mode.TELEPORT, model)
    pages = pages_of(inp)
    rest = pages.nonzero - pages.restorable
    assert p.memory_wan_bytes == int(rest * PAGE_SIZE * 0.4 + pages.zero * 1.0
                                     + pages.restorable * 16)
    # a fresher map naming more pages sends less
    more = predict(dataclasses.replace(inp, restorable_bytes=500 * MIB), Mode.TELEPORT, model)
    assert more.wan_bytes < p.wan_bytes


def test_mapped_pages_written_since_the_base_cross_whole() -> None:
    """A quarter of the mapped pages sampled differ from their base block: teleport counts
    three quarters as restorable and sends the rest whole; stock does not change."""
    inp = inputs(map_written_share=0.25)
    assert pages_of(inp).restorable == pages_of(inputs()).restorable * 3 // 4
    assert predict(inp, Mode.TELEPORT).wan_bytes > predict(inputs(), Mode.TELEPORT).wan_bytes
    assert predict(inp, Mode.STOCK) == predict(inputs(), Mode.STOCK)


def test_zstd_uses_the_sampled_ratio_of_every_non_zero_page() -> None:
    lo = predict(inputs(zstd_ratio=0.2), Mode.ZSTD)
    hi = predict(inputs(zstd_ratio=0.6), Mode.ZSTD)
    assert hi.wan_bytes > 2.5 * lo.wan_bytes


def test_drop_cache_pays_for_what_the_workload_reads_again() -> None:
    inp = inputs()
    never = predict(inp, Mode.DROP_CACHE, PredictionModel(reread_share=0.0))
    always = predict(inp, Mode.DROP_CACHE, PredictionModel(reread_share=1.0))
    stock = predict(inp, Mode.STOCK)
    assert never.wan_bytes < stock.wan_bytes  # the dropped cache went as zero pages
    assert always.wan_bytes > never.wan_bytes  # ... and came back as data
    # read again after the stream passed it, the whole cache crosses twice: more than stock
    clean_pages = comp().cache_clean // PAGE_SIZE
    assert always.wan_bytes - stock.wan_bytes == pytest.approx(
        clean_pages * PAGE_RECORD_BYTES, rel=0.01)
    assert always.total_s is not None and stock.total_s is not None
    assert always.total_s > stock.total_s  # dropping and zeroing in the guest costs time too


def test_the_disks_overlays_cross_first_at_the_links_rate_after_the_mirrors_start() -> None:
    model = dataclasses.replace(NO_OVERHEAD, disk_setup_s=2.0)
    bare = predict(inputs(), Mode.ZSTD, model)
    p = predict(inputs(disk_overlay_bytes=80 * MIB), Mode.ZSTD, model)
    assert p.disk_wan_bytes == 80 * MIB and p.wan_bytes == bare.wan_bytes + 80 * MIB
    assert p.total_s is not None and bare.total_s is not None
    # no bound of one chunk per RTT: a big overlay goes at the link's rate
    assert p.total_s - bare.total_s == pytest.approx(2.0 + 80 * MIB / 12.5e6)


def test_dirtying_costs_rounds_and_a_guest_faster_than_the_link_does_not_converge() -> None:
    calm = predict(inputs(dirty_rate_bytes_per_s=1e6), Mode.STOCK)
    idle = predict(inputs(), Mode.STOCK)
    wild = predict(inputs(dirty_rate_bytes_per_s=50e6), Mode.STOCK)
    assert calm.converges and calm.wan_bytes > idle.wan_bytes and calm.rounds > 1
    assert not wild.converges


def stream(first: float = 500e6, page: float = 4104.0, qemu: float | None = None) -> Stream:
    return Stream(first, first, page, page if qemu is None else qemu)


def test_auto_converge_throttles_a_fast_writer_until_it_converges() -> None:
    for periodic in (True, False):
        without = precopy(stream(), 50e6 / 4096, 2**18, 12.5e6, 1.0, auto_converge=False,
                          periodic_sync=periodic)
        with_ac = precopy(stream(), 50e6 / 4096, 2**18, 12.5e6, 1.0, auto_converge=True,
                          periodic_sync=periodic)
        assert not without.converges and with_ac.converges
        assert with_ac.wan_bytes > 500e6


def test_a_long_round_finds_fewer_pages_written_than_rate_times_time() -> None:
    """Writes land on pages already written: a short window counts nearly every write, a long
    one approaches the span (the pages the guest writes over) and never exceeds it."""
    rate, span = 5000.0, 2**18
    assert dirtied(rate, span, 1.0) == pytest.approx(rate, rel=0.01)
    assert dirtied(rate, span, 60.0) < 0.9 * rate * 60
    assert dirtied(rate, span, 1e4) == pytest.approx(span)
    assert dirtied(rate, span, 0.0) == 0 and dirtied(0.0, span, 10.0) == 0


def test_periodic_syncs_throttle_within_what_would_be_one_long_round() -> None:
    """QEMU >= 9.2 syncs every 5 s under auto-converge: the throttle rises while the big
    remainder of round 1 goes, instead of once per whole round, so less is resent."""
    args = (stream(1e9), 20e6 / 4096, 2**18, 12.5e6, 1.0)
    periodic = precopy(*args, auto_converge=True, periodic_sync=True)
    rounds = precopy(*args, auto_converge=True, periodic_sync=False)
    assert periodic.converges and rounds.converges
    assert periodic.wan_bytes < rounds.wan_bytes
    assert periodic.rounds > rounds.rounds  # a sync every 5 s
    assert periodic_sync("10.0.2") and periodic_sync("9.2.0") and periodic_sync("")
    assert not periodic_sync("7.2.22") and not periodic_sync("9.1.3")


def test_compression_does_not_widen_the_switch_over_threshold() -> None:
    """QEMU switches over when what is pending fits the limit at its bandwidth in guest bytes
    (zstd's counted compressed, teleport's told the WAN's rate): a remainder of 15 MB at a
    12.5 MB/s link does not fit 1 s raw, though it would compressed 3x. It costs a round."""
    pending = 15e6 / 4096
    raw = precopy(stream(), 0.0, 2**18, 12.5e6, 1.0, auto_converge=False,
                  first_extra=pending)
    # teleport-like: QEMU hands its relay raw pages, the relay sends a third of the bytes
    packed = precopy(stream(page=4104 / 3, qemu=4104), 0.0, 2**18, 12.5e6, 1.0,
                     auto_converge=False, first_extra=pending)
    assert raw.rounds == packed.rounds == 3  # round 1, the remainder, stop-and-copy
    fits = precopy(stream(page=4104 / 3, qemu=4104), 0.0, 2**18, 12.5e6, 1.0,
                   auto_converge=False, first_extra=10e6 / 4096)
    assert fits.rounds == 2  # round 1, then the remainder in stop-and-copy


def test_synchronous_writes_cross_once() -> None:
    """With auto-converge the guest's disk writes are synchronous (storage.py): the mirror
    sends each once instead of the granules around it."""
    model = dataclasses.replace(NO_OVERHEAD, mirror_write_amplification=8.0,
                                mirror_sync_write_amplification=1.0)
    bg = inputs(disk_write_bytes_per_s=1e5)
    sync = inputs(disk_write_bytes_per_s=1e5, auto_converge=True)
    assert mirror_writes(bg, 12.5e6, model) == pytest.approx(8e5)
    assert mirror_writes(sync, 12.5e6, model) == pytest.approx(1e5)


def test_a_cap_slows_it_down_and_rtts_add_up() -> None:
    free_run = predict(inputs(), Mode.STOCK)
    capped = predict(inputs(cap_bytes_per_s=6.25e6), Mode.STOCK)
    far = predict(inputs(rtt_ms=150.0), Mode.STOCK)
    assert free_run.total_s is not None and capped.total_s is not None and far.total_s
    assert capped.total_s > 1.8 * (free_run.total_s - 5)
    assert far.total_s > free_run.total_s


def test_t_min_is_what_must_cross_over_the_goodput_plus_rtts() -> None:
    inp = inputs()
    model = PredictionModel(goodput_share=1.0, tmin_rtts=3)
    assert t_min(inp, model) == pytest.approx(
        must_cross_bytes(inp, model) / 12.5e6 + 3 * 0.05)
    # no mode beats it
    for p in predict_all(inp):
        assert p.total_s is not None and p.total_s >= t_min(inp)  # type: ignore[operator]
    assert t_min(inputs(link_rate_bytes_per_s=None)) is None
    assert t_min(inputs(dirty_rate_bytes_per_s=1e9)) is None  # faster than any precopy


def test_t_min_does_not_charge_the_guests_dirtying_while_the_overlays_cross() -> None:
    """The memory starts once the disks are in sync: the overlays go at the full goodput,
    only the memory shares the link with the guest's dirtying (tpcc-default-025144's teleport
    ran in 0.83x a T_min that charged it on its 562 MB overlay too)."""
    model = PredictionModel(goodput_share=1.0, tmin_rtts=0)
    bare = inputs(dirty_rate_bytes_per_s=5e6)
    disks = inputs(dirty_rate_bytes_per_s=5e6, disk_overlay_bytes=500 * MIB)
    a, b = t_min(bare, model), t_min(disks, model)
    assert a is not None and b is not None
    assert b - a == pytest.approx(500 * MIB / 12.5e6)


def test_the_record_keeps_the_prediction_of_its_own_mode_and_t_min() -> None:
    r = constructed_run(Mode.ZSTD)
    inp = inputs()
    keep_prediction(r, inp)
    assert r.prediction is not None and r.prediction.mode is Mode.ZSTD
    assert r.prediction == predict(inp, Mode.ZSTD)
    assert r.t_min_s == t_min(inp)
    s = r.summary()
    assert s["predicted_wan_bytes"] == r.prediction.wan_bytes
    assert s["predicted_total_s"] == r.prediction.total_s and s["t_min_s"] == r.t_min_s
    back = type(r).from_json(r.to_json())
    assert back.prediction == r.prediction and back.prediction_inputs == inp


@given(st.integers(0, 2**34), st.integers(0, 2**34), st.integers(0, 2**34),
       st.integers(0, 2**34), st.floats(1e5, 1e10), st.floats(0, 1), st.floats(0.05, 1.0))
def test_teleport_never_costs_more_than_stock(free: int, anon: int, clean: int,
                                              restorable: int, rate: float, zero: float,
                                              ratio: float) -> None:
    c = Composition(total=free + anon + clean, free=free, anon=anon, cache_clean=clean,
                    restorable=restorable)
    inp = PredictionInputs(ram_bytes=c.total, composition=c, restorable_bytes=restorable,
                           zero_fraction=zero, zstd_ratio_rest=ratio, link_rate_bytes_per_s=rate)
    stock = predict(inp, Mode.STOCK)
    tele = predict(inp, Mode.TELEPORT)
    assert 0 <= tele.wan_bytes <= stock.wan_bytes


def test_the_goodput_is_never_above_the_profiles_rate() -> None:
    # a goodput measured on a faster link (the fast profile's runs) must not speed this one up
    fast = predict(inputs(link_rate_bytes_per_s=100e6, profile_rate_bytes_per_s=12.5e6),
                   Mode.STOCK, NO_OVERHEAD)
    right = predict(inputs(link_rate_bytes_per_s=12.5e6), Mode.STOCK, NO_OVERHEAD)
    assert fast.total_s == pytest.approx(right.total_s)
    slower = predict(inputs(link_rate_bytes_per_s=10e6, profile_rate_bytes_per_s=12.5e6),
                     Mode.STOCK, NO_OVERHEAD)
    assert slower.total_s and right.total_s and slower.total_s > right.total_s


def test_the_guests_disk_writes_cross_too_and_slow_the_memory_down() -> None:
    """The mirror sends the guest's writes, amplified (whole granules), until it is in sync
    and then beside the memory stream, sharing the link."""
    model = dataclasses.replace(NO_OVERHEAD, mirror_write_amplification=2.0)
    quiet = predict(inputs(disk_overlay_bytes=8 * MIB), Mode.STOCK, model)
    busy = predict(inputs(disk_overlay_bytes=8 * MIB, disk_write_bytes_per_s=1.25e6),
                   Mode.STOCK, model)
    assert quiet.total_s is not None and busy.total_s is not None
    # the mirror sends 2.5 of the link's 12.5 MB/s: the overlay takes 1.25x as long to be in
    # sync, and memory gets 10 MB/s, so it too takes 1.25x as long ...
    disk_s = 8 * MIB / 12.5e6
    memory_s = quiet.total_s - disk_s
    busy_memory_s = busy.total_s - 1.25 * disk_s
    assert busy_memory_s == pytest.approx(1.25 * memory_s, rel=0.01)
    # ... and the mirror sends 2.5 MB/s all that time
    assert busy.disk_wan_bytes == pytest.approx(
        8 * MIB + 2.5e6 * (1.25 * disk_s + busy_memory_s), rel=0.01)
    assert busy.memory_wan_bytes == quiet.memory_wan_bytes


def test_a_map_the_guest_rewrites_meanwhile_names_fewer_pages_teleport_can_use() -> None:
    """Mapped pages the guest rewrites between the map and round 1 differ from their disk
    blocks: the relay sends them whole. The older the map (it takes map_s) and the faster the
    guest writes, the more of them."""
    still = inputs(dirty_rate_bytes_per_s=0.0, map_s=10.0)
    busy = inputs(dirty_rate_bytes_per_s=25e6, map_s=10.0)
    quick = inputs(dirty_rate_bytes_per_s=25e6, map_s=0.5)
    p = pages_of(busy)
    assert stale_pages(still, p, 0.4) == 0
    assert 0 < stale_pages(quick, p, 0.4) < stale_pages(busy, p, 0.4) < p.restorable
    tele = [predict(i, Mode.TELEPORT).memory_wan_bytes for i in (still, quick, busy)]
    assert tele[0] < tele[1] < tele[2]
    # stock sends every page whatever the map says
    assert predict(busy, Mode.STOCK).memory_wan_bytes == \
        predict(dataclasses.replace(busy, map_s=0.5), Mode.STOCK).memory_wan_bytes


def test_a_sampled_dirty_rate_comes_with_a_caveat_and_the_dry_run_carries_it() -> None:
    from pcteleport.headless import prediction_summary

    sampled = inputs(dirty_rate_method="page-sampling")
    assert caveats(sampled) and "same bytes" in caveats(sampled)[0]
    assert caveats(inputs(dirty_rate_method="dirty-bitmap")) == []
    assert prediction_summary("web", "osaka", sampled)["caveats"] == caveats(sampled)
    assert prediction_summary("web", "osaka", inputs())["caveats"] == []


def test_a_teleport_that_can_use_none_of_its_map_sends_what_zstd_sends() -> None:
    """Mapped pages sent whole are cache pages and compress as those do (the sample's ratio on
    every page, less the share of those no map names): with every mapped block written since
    the base, teleport's relay compresses the same pages zstd does, to the same bytes."""
    inp = inputs(zstd_ratio=0.4, zstd_ratio_rest=0.25, map_written_share=1.0)
    tele = predict(inp, Mode.TELEPORT, NO_OVERHEAD)
    zstd = predict(inp, Mode.ZSTD, NO_OVERHEAD)
    assert tele.memory_wan_bytes == pytest.approx(zstd.memory_wan_bytes, rel=0.01)
    # a usable map sends less
    assert predict(inputs(zstd_ratio=0.4, zstd_ratio_rest=0.25), Mode.TELEPORT,
                   NO_OVERHEAD).memory_wan_bytes < tele.memory_wan_bytes
