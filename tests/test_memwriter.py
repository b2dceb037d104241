"""The guest's own lost-page detector (scenarios/guest/memwriter.py), run on the host."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

GUEST = Path(__file__).resolve().parent.parent / "scenarios" / "guest"


@pytest.fixture
def memwriter(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(GUEST))
    import memwriter

    return memwriter


def test_a_page_that_went_back_to_an_older_write_is_reported(memwriter, capsys) -> None:
    pages = memwriter.StampedPages(8)
    for _ in range(3):
        assert all(pages.rewrite(i) for i in range(8))
    before = bytes(pages.buf[5 * 4096:6 * 4096])  # page 5 as a migration might have sent it
    assert pages.rewrite(5)
    pages.buf[5 * 4096:6 * 4096] = before  # ... and the later write to it was lost
    assert not pages.rewrite(5)
    assert "stale page 5: holds (5, 3), expected (5, 4)" in capsys.readouterr().err
    assert pages.rewrite(5)  # it carries on from the count it expects


def test_it_writes_per_second_rows_at_the_asked_rate(tmp_path: Path) -> None:
    out = tmp_path / "w.jsonl"
    subprocess.run([sys.executable, str(GUEST / "memwriter.py"), "--mib", "2", "--rate", "4",
                    "--duration", "2.5", "--out", str(out)], check=True, timeout=30)
    import json

    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and all("lost" not in r for r in rows)
    written = sum(r["pages_written"] for r in rows)
    assert 0 < written <= 1.5 * 1024 * 2.5  # paced: 4 MiB/s is 1024 pages/s, never faster
