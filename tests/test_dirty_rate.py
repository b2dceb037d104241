"""The dirty rate measured before a migration (libvirt's calc-dirty-rate), against a fake
domain: no lab."""

from __future__ import annotations

from typing import Any

import libvirt
import pytest

from pcteleport.errors import PcteleportError
from pcteleport.sites.libvirt import prediction

BITMAP = libvirt.VIR_DOMAIN_DIRTYRATE_MODE_DIRTY_BITMAP
SAMPLING = libvirt.VIR_DOMAIN_DIRTYRATE_MODE_PAGE_SAMPLING


class FakeDomain:
    def __init__(self, readings: dict[int, dict[str, Any]]) -> None:
        self.readings, self.modes = readings, []  # type: ignore[var-annotated]

    def startDirtyRateCalc(self, seconds: int, mode: int) -> None:
        self.modes.append(mode)


class FakeConn:
    def __init__(self, dom: FakeDomain) -> None:
        self.dom = dom

    def domainListGetStats(self, doms: list[Any], what: int) -> list[Any]:
        stats = {"dirtyrate.calc_status": libvirt.VIR_DOMAIN_DIRTYRATE_MEASURED}
        return [(self.dom, stats | self.dom.readings[self.dom.modes[-1]])]


def _rate(readings: dict[int, dict[str, Any]]) -> tuple[tuple[float, str], list[int]]:
    dom = FakeDomain(readings)
    return prediction.dirty_rate(dom, FakeConn(dom), seconds=0), dom.modes  # type: ignore[arg-type]


def test_a_bitmap_reading_is_taken_as_it_is() -> None:
    rate, modes = _rate({BITMAP: {"dirtyrate.megabytes_per_second": 9}})
    assert rate == (9 * 2**20, "dirty-bitmap") and modes == [BITMAP]


def test_a_zero_from_the_bitmap_is_checked_by_page_sampling() -> None:
    rate, modes = _rate({BITMAP: {"dirtyrate.megabytes_per_second": 0},
                         SAMPLING: {"dirtyrate.megabytes_per_second": 7}})
    assert rate == (7 * 2**20, "page-sampling") and modes == [BITMAP, SAMPLING]
    rate, _ = _rate({BITMAP: {"dirtyrate.megabytes_per_second": 0},
                     SAMPLING: {"dirtyrate.megabytes_per_second": 0}})
    assert rate[0] == 0.0  # both say so: an idle guest


def test_a_missing_stat_is_no_reading_not_zero() -> None:
    with pytest.raises(PcteleportError, match="megabytes_per_second"):
        _rate({BITMAP: {}, SAMPLING: {}})
