"""Units and the composition bar: pure functions the screens rely on."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pcteleport.records import Composition
from pcteleport.ui import units
from pcteleport.ui.composition_bar import SEGMENTS, cells, composition_bar, segment_sizes


@pytest.mark.parametrize(("text", "bits"), [("100M", 100e6), ("1.5G", 1.5e9), ("800k", 800e3),
                                            ("100mbit", 100e6), ("25 M", 25e6), ("", None)])
def test_parse_cap_reads_bits_per_second(text: str, bits: float | None) -> None:
    got = units.parse_cap(text)
    assert got == (None if bits is None else bits / 8)


@pytest.mark.parametrize("text", ["fast", "-5M", "0"])
def test_parse_cap_rejects_nonsense_with_a_hint(text: str) -> None:
    with pytest.raises(ValueError, match=r"100M|above 0"):
        units.parse_cap(text)


def test_rates_and_sizes_read_as_operators_expect() -> None:
    assert units.link_rate(12.5e6) == "100 Mbit/s"
    assert units.size(2**30) == "1.0 GiB" and units.size(512) == "512 B"
    assert units.rate(300 * 2**20) == "300.0 MiB/s"
    assert units.seconds(9.44) == "9.4 s" and units.seconds(125) == "2 min 05 s"
    assert units.millis(306.4) == "306 ms" and units.count(1234567) == "1,234,567"


@given(st.lists(st.integers(0, 2**40), min_size=6, max_size=6), st.integers(0, 200))
def test_bar_cells_always_fill_the_width(sizes: list[int], width: int) -> None:
    out = cells(sizes, width)
    assert all(n >= 0 for n in out)
    assert sum(out) == (width if sum(sizes) > 0 and width > 0 else 0)


def test_small_parts_stay_visible_and_restorable_is_carved_from_clean_cache() -> None:
    c = Composition(total=1000, free=900, anon=90, cache_clean=10, restorable=6)
    sizes = segment_sizes(c)
    assert sizes == [6, 4, 0, 90, 0, 900]
    out = cells(sizes, 20)
    assert out[0] >= 1 and out[1] >= 1  # tiny but non-zero parts get a cell
    assert len(composition_bar(c, 20).plain) == 20
    assert len(SEGMENTS) == len(sizes)
