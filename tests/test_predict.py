"""The WAN-bytes / time prediction per mode."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pcteleport.predict import PAGE_RECORD_BYTES, ZERO_RECORD_BYTES, PredictionModel, predict
from pcteleport.records import PAGE_SIZE, Composition, Mode

MIB = 2**20


def comp(restorable: int = 300 * MIB, clean: int = 400 * MIB, free: int = 300 * MIB,
         anon: int = 300 * MIB) -> Composition:
    return Composition(total=free + anon + clean + 24 * MIB, free=free, anon=anon,
                       kernel=24 * MIB, cache_clean=clean, restorable=restorable)


def test_stock_sends_every_non_zero_page_as_a_page_record() -> None:
    c = comp()
    p = predict(c, Mode.STOCK, link_bytes_per_s=None)
    data_pages = (c.total - c.free) // PAGE_SIZE
    zero_pages = c.free // PAGE_SIZE
    assert p.wan_bytes == data_pages * PAGE_RECORD_BYTES + zero_pages * ZERO_RECORD_BYTES
    assert p.seconds is None  # unknown link rate: no time


def test_teleport_saves_exactly_the_restorable_pages() -> None:
    c = comp()
    model = PredictionModel(teleport_ref_bytes=16)
    stock = predict(c, Mode.STOCK, 12.5e6, model=model)
    tele = predict(c, Mode.TELEPORT, 12.5e6, model=model)
    pages = c.restorable // PAGE_SIZE
    assert stock.wan_bytes - tele.wan_bytes == pages * (PAGE_RECORD_BYTES - 16)
    assert tele.seconds is not None and stock.seconds is not None
    assert tele.seconds < stock.seconds


def test_restorable_beyond_clean_cache_is_not_trusted() -> None:
    lying = comp(restorable=900 * MIB, clean=100 * MIB)
    honest = comp(restorable=100 * MIB, clean=100 * MIB)
    assert predict(lying, Mode.TELEPORT, None).wan_bytes == \
        predict(honest, Mode.TELEPORT, None).wan_bytes


def test_drop_cache_turns_clean_cache_into_zero_pages_only_if_free_is_zeroed() -> None:
    c = comp()
    zeroed = predict(c, Mode.DROP_CACHE, None, model=PredictionModel(free_zero_fraction=1.0))
    dirty_free = predict(c, Mode.DROP_CACHE, None, model=PredictionModel(free_zero_fraction=0.0))
    stock_dirty_free = predict(c, Mode.STOCK, None, model=PredictionModel(free_zero_fraction=0.0))
    assert zeroed.wan_bytes < predict(c, Mode.STOCK, None).wan_bytes
    assert dirty_free.wan_bytes == stock_dirty_free.wan_bytes


def test_zstd_is_bounded_by_compression_speed_on_a_fast_link() -> None:
    c = comp()
    model = PredictionModel(zstd_bytes_per_s=100e6, setup_s=0, setup_rtts=0)
    p = predict(c, Mode.ZSTD, link_bytes_per_s=10e9, model=model)
    assert p.seconds == pytest.approx(c.total / 100e6)


def test_cap_and_rtt_slow_it_down() -> None:
    c = comp()
    free_run = predict(c, Mode.STOCK, 12.5e6, rtt_ms=0)
    capped = predict(c, Mode.STOCK, 12.5e6, rtt_ms=0, cap_bytes_per_s=6.25e6)
    far = predict(c, Mode.STOCK, 12.5e6, rtt_ms=100)
    assert capped.seconds is not None and free_run.seconds is not None and far.seconds
    assert capped.seconds > 1.9 * (free_run.seconds - 1.0)
    assert far.seconds == pytest.approx(free_run.seconds + PredictionModel().setup_rtts * 0.1)


def test_a_guest_dirtying_faster_than_the_link_does_not_converge() -> None:
    c = comp()
    slow = predict(c, Mode.STOCK, 1e6, model=PredictionModel(dirty_rate_bytes_per_s=50e6))
    calm = predict(c, Mode.STOCK, 1e6, model=PredictionModel(dirty_rate_bytes_per_s=1e5))
    assert not slow.converges and calm.converges
    assert calm.wan_bytes > predict(c, Mode.STOCK, 1e6).wan_bytes


@given(st.integers(0, 2**34), st.integers(0, 2**34), st.integers(0, 2**34),
       st.integers(0, 2**34), st.floats(1e5, 1e10))
def test_teleport_never_costs_more_than_stock(free: int, anon: int, clean: int,
                                              restorable: int, rate: float) -> None:
    c = Composition(total=free + anon + clean, free=free, anon=anon, cache_clean=clean,
                    restorable=restorable)
    stock = predict(c, Mode.STOCK, rate)
    tele = predict(c, Mode.TELEPORT, rate)
    assert tele.wan_bytes <= stock.wan_bytes
    assert tele.wan_bytes >= 0


def test_ram_outside_memtotal_is_sent_as_data() -> None:
    c = comp()
    with_ram = predict(c, Mode.STOCK, None, ram_bytes=c.total + 64 * MIB)
    assert with_ram.wan_bytes - predict(c, Mode.STOCK, None).wan_bytes == \
        (64 * MIB // PAGE_SIZE) * PAGE_RECORD_BYTES
    assert predict(c, Mode.STOCK, None, ram_bytes=c.total // 2).wan_bytes == \
        predict(c, Mode.STOCK, None).wan_bytes  # never below what the guest itself counts
