"""Screens that read at a glance (issue 15, item 4): a screenshot reads the same in any SVG
viewer as the console does in a terminal, labels apart from their values."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from rich.text import Text

from pcteleport.record_store import RecordStore
from pcteleport.ui.svg_export import legible_svg
from tests.record_factory import constructed_run
from tests.ui.svg_reading import differences, explain, harsh, shown

ROOT = Path(__file__).resolve().parent.parent.parent


def rich_svg(text: Text, width: int = 60) -> str:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(text)
    return console.export_svg(title="t")


def test_rich_alone_lets_a_label_run_into_its_value() -> None:
    # What issue 15 saw: the spaces after "tokyo" belong to the next run, and go with it.
    svg = rich_svg(Text.assemble(("tokyo", "bold"), "  recording", ("  ● ", "blue"),
                                 ("replay", "blue")))
    assert shown(svg)[0] == "tokyo  recording  ● replay"
    assert harsh(svg)[0].startswith("tokyorecording")


def test_legible_svg_keeps_every_word_where_the_terminal_shows_it() -> None:
    text = Text.assemble(("tokyo", "bold"), "  recording", ("  ● ", "blue"), ("replay", "blue"),
                         "\n", ("│ every 600 s", "dim"), ("  sort: name  ", "dim"), "\n",
                         ("   6,398", "bold"), (" 25.0 MiB  <&> ", "dim"))
    before = rich_svg(text)
    after = legible_svg(before)
    assert shown(after) == shown(before)
    assert differences(after) == []
    assert harsh(after)[:3] == ["tokyo  recording  ● replay", "│ every 600 s  sort: name",
                                "   6,398 25.0 MiB  <&>"]
    assert "&#160;<" not in after and ">&#160;" not in after  # no element starts with a space


def test_legible_svg_leaves_wide_characters_in_their_cells() -> None:
    before = rich_svg(Text.assemble(("東京", "bold"), "  大阪  ok"))
    after = legible_svg(before)
    assert shown(after) == shown(before) and differences(after) == []


@pytest.fixture(scope="module")
def screens(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Every screen of the console, as scripts/screenshots.py shoots them from a replay."""
    tmp = tmp_path_factory.mktemp("screens")
    path = RecordStore(tmp / "rec").save(constructed_run(seconds=4))
    out = tmp / "shots"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "screenshots.py"), "--out", str(out),
         "--size", "120x36", "--speed", "8", str(path)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return {p.stem: p.read_text(encoding="utf-8") for p in out.glob("*.svg")}


SCREENS = ["main", "vm-detail", "migrate-dialog", "migration-running", "migration-done",
           "compare", "help"]


@pytest.mark.parametrize("name", SCREENS)
def test_every_screen_reads_the_same_in_any_viewer(screens: dict[str, str], name: str) -> None:
    assert differences(screens[name]) == []


def test_labels_stand_apart_from_their_values(screens: dict[str, str]) -> None:
    # Each phrase as issue 15 quoted it run together, read the harsh way.
    def read(name: str) -> str:
        return "\n".join(harsh(screens[name]))

    assert "pcteleport — replay" in read("main")
    assert "tokyo  recording  ● replay" in read("main")
    assert "every 600 s  sort: name" in read("main")
    assert "RTT 50 ms  (100mbit-50ms)" in read("main")
    assert "web  tokyo → osaka  teleport  WAN 94.4 Mbit/s" in read("migration-done")
    assert "VM all  mode all  chart total time  1 of 1 runs" in read("compare")


@pytest.mark.parametrize("path", sorted((ROOT / "tests" / "ui" / "__snapshots__").rglob("*.svg")),
                         ids=lambda p: p.name)
def test_snapshots_read_the_same_in_any_viewer(path: Path) -> None:
    # Every size and state the snapshot tests keep (80×24, 160×48, light theme, three sites).
    assert differences(path.read_text(encoding="utf-8")) == [], "run `make snapshots`"
@pytest.mark.parametrize("path", sorted((ROOT / "screenshots").glob("*.svg")),
                         ids=lambda p: p.name)
def test_shipped_screenshots_read_the_same_in_any_viewer(path: Path) -> None:
    assert differences(path.read_text(encoding="utf-8")) == [], "run `make screenshots`"




def test_a_failed_snapshot_says_which_rows_differ() -> None:
    # A flaky snapshot in a CI run is a bug report: the log must say what the screen showed.
    svg = (ROOT / "tests" / "ui" / "__snapshots__" / "test_snapshots"
           / "test_main_screen[80x24].svg").read_text(encoding="utf-8")
    assert explain(svg, svg).startswith("same words and styles")
    worded = explain(svg, svg.replace(">connected<", ">gone&#160;away<", 1))
    assert "-│ tokyo  10.77.0.1  libvirt 9.0.0  ● connected" in worded
    assert "+│ tokyo  10.77.0.1  libvirt 9.0.0  ● gone away" in worded
    first = svg.index('class="terminal-r5" x="24.4"')  # "tokyo", bold
    restyled = svg[:first] + 'class="terminal-r2" x="24.4"' + svg[first + 28:]
    assert explain(svg, restyled).startswith("row 2 ('│ tokyo  10.77.0.1") \
        and "styles differ at columns [2]" in explain(svg, restyled)
