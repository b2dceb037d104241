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
