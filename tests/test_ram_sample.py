"""The RAM sample the prediction takes (ramcheck.sample), on a made-up guest RAM file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pcteleport.sites.libvirt.ramcheck import PAGE, sample

STRETCH = 512  # zero memory comes in long stretches, as a guest's free memory does


def _ram(path: Path, pages: int) -> int:
    """Half zero, in alternating stretches; the rest text-like (zstd packs it)."""
    text = (b"GET /index.html HTTP/1.1 200 " * 200)[:PAGE]
    with path.open("wb") as f:
        for i in range(pages):
            f.write(bytes(PAGE) if (i // STRETCH) % 2 == 0 else text)
    return os.open(path, os.O_RDONLY)


@pytest.mark.parametrize("seed", range(6))
def test_the_zero_share_holds_from_one_sample_to_the_next(tmp_path: Path, seed: int) -> None:
    pages = 32 * STRETCH
    fd = _ram(tmp_path / "ram", pages)
    try:
        s = sample(fd, pages * PAGE, {"pages": 2048, "run": 64, "seed": seed})
    finally:
        os.close(fd)
    assert s["pages"] == 2048 == s["zero"] + s["named"] + s["rest"]
    # single pages: ±1.1 % (one sigma); runs of 64 inside 512-page stretches were 32 draws
    assert s["zero"] / s["pages"] == pytest.approx(0.5, abs=0.04)
    assert 0 < s["packed"] < s["raw"] / 4  # the text packs well


def test_pages_a_map_names_are_counted_apart(tmp_path: Path) -> None:
    pages = 8 * STRETCH
    fd = _ram(tmp_path / "ram", pages)
    try:
        # the map names the first data stretch: an eighth of RAM, a quarter of its data
        s = sample(fd, pages * PAGE, {"pages": 2048, "run": 64, "seed": 1,
                                      "exclude": [[STRETCH, STRETCH]]})
    finally:
        os.close(fd)
    assert s["named"] / s["pages"] == pytest.approx(0.125, abs=0.03)
    assert s["rest"] / s["pages"] == pytest.approx(0.375, abs=0.03)
    assert 0 < s["raw_rest"] < s["raw"]


def test_named_pages_whose_block_was_written_since_the_base_are_counted(tmp_path: Path) -> None:
    """The map names two data stretches on two disks' raw images: the first disk holds their
    bytes, the second holds the first half of its stretch and other bytes for the rest (written
    since the base, as an overlay's blocks are): a quarter of the named pages."""
    from pcteleport.teleport.disk import disk_offset

    pages = 8 * STRETCH
    fd = _ram(tmp_path / "ram", pages)
    with (tmp_path / "ram").open("rb") as f:
        f.seek(STRETCH * PAGE)
        data = f.read(STRETCH * PAGE)  # the first data stretch's bytes (all stretches alike)
    (tmp_path / "a.raw").write_bytes(bytes(8 * PAGE) + data)  # its stretch at 8 pages in
    half = STRETCH // 2 * PAGE
    (tmp_path / "b.raw").write_bytes(data[:half] + bytes(half))
    try:
        s = sample(fd, pages * PAGE, {
            "pages": 4096, "run": 64, "seed": 2,
            "exclude": [[STRETCH, STRETCH, disk_offset(0, 8 * PAGE)],
                        [3 * STRETCH, STRETCH, disk_offset(1, 0)]],
            "disks": [str(tmp_path / "a.raw"), str(tmp_path / "b.raw")]})
        old = sample(fd, pages * PAGE, {"pages": 4096, "run": 64, "seed": 2,
                                        "exclude": [[STRETCH, STRETCH], [3 * STRETCH, STRETCH]]})
    finally:
        os.close(fd)
    assert s["named"] / s["pages"] == pytest.approx(0.25, abs=0.03)
    assert s["named_written"] / s["named"] == pytest.approx(0.25, abs=0.04)
    assert old["named"] == s["named"] and old["named_written"] == 0  # no disks: none known
