"""The engine guard: which QEMU may migrate a TCG guest without losing its dirty pages."""

from __future__ import annotations

import pytest

from pcteleport.engine import tcg_dirty_page_bug, version_text, version_tuple


def test_versions_read_as_libvirt_numbers_and_text() -> None:
    assert version_tuple(7_002_022) == (7, 2, 22)
    assert version_tuple(10_000_002) == (10, 0, 2)
    assert version_tuple("9.0") == (9, 0, 0)
    assert version_text(11_003_000) == "11.3.0"
    with pytest.raises(ValueError):
        version_tuple("qemu")


@pytest.mark.parametrize("version", ["7.2.22", 7_002_022, "8.2.2", "8.2.99"])
def test_tcg_on_qemu_before_9_is_named(version: object) -> None:
    text = tcg_dirty_page_bug(version, tcg=True, site="tokyo")  # type: ignore[arg-type]
    assert text is not None
    assert "loses dirty pages" in text and "03bfc2188f" in text and "at tokyo" in text
    assert version_text(version) in text  # type: ignore[arg-type]
    assert "\n" not in text


@pytest.mark.parametrize(("version", "tcg"), [
    ("9.0.0", True), ("10.0.2", True), (10_000_002, True),  # fixed upstream
    ("7.2.22", False),  # KVM tracks dirty pages itself
    ("", True), (None, True), ("unknown", True),  # nothing to say about an unknown engine
])
def test_no_warning_where_the_engine_is_sound_or_unknown(version: object, tcg: bool) -> None:
    assert tcg_dirty_page_bug(version, tcg) is None  # type: ignore[arg-type]


def test_dirty_bitmap_measurement_is_avoided_where_it_kills_qemu() -> None:
    from pcteleport.engine import dirty_bitmap_crashes

    assert dirty_bitmap_crashes("7.2.22", tcg=True)  # measured: QEMU segfaults
    assert dirty_bitmap_crashes(7_002_022, tcg=True)
    assert not dirty_bitmap_crashes("10.0.2", tcg=True)  # measured: fine
    assert not dirty_bitmap_crashes("7.2.22", tcg=False)  # KVM has the state it reads
    assert not dirty_bitmap_crashes("", tcg=True) and not dirty_bitmap_crashes(None, tcg=True)


def test_page_sampling_alone_where_dirty_bitmap_would_crash() -> None:
    import libvirt

    from pcteleport.sites.libvirt.prediction import dirty_rate

    asked: list[int] = []

    class Dom:
        def startDirtyRateCalc(self, seconds: int, mode: int) -> None:
            asked.append(mode)

    class Conn:
        def domainListGetStats(self, doms: list, what: int) -> list:
            return [(doms[0], {"dirtyrate.calc_status": libvirt.VIR_DOMAIN_DIRTYRATE_MEASURED,
                               "dirtyrate.megabytes_per_second": 3})]

    assert dirty_rate(Dom(), Conn(), seconds=0, bitmap=False) == (  # type: ignore[arg-type]
        3 * 2**20, "page-sampling")
    assert asked == [libvirt.VIR_DOMAIN_DIRTYRATE_MODE_PAGE_SAMPLING]
    asked.clear()
    dirty_rate(Dom(), Conn(), seconds=0)  # type: ignore[arg-type]
    assert asked == [libvirt.VIR_DOMAIN_DIRTYRATE_MODE_DIRTY_BITMAP]
