"""One palette: every colour the UI draws from Python lives in console/ui/palette.py, the
stylesheet uses theme variables only, and the palette's meanings match the Textual theme's."""

from __future__ import annotations

import ast
import colorsys
import re
from pathlib import Path

import pytest
from rich.color import Color as RichColor
from rich.color import ColorParseError
from textual.color import Color as TextualColor
from textual.theme import BUILTIN_THEMES

from pcteleport.ui import palette

UI = Path(palette.__file__).parent
MODULES = sorted(p for p in UI.glob("*.py") if p.name != "palette.py")
HEX_OR_FUNCTION = re.compile(r"#(?:[0-9a-fA-F]{8}|[0-9a-fA-F]{6})\b|\b(?:rgb|rgba|hsl|hsla)\(")


def _is_colour(token: str) -> bool:
    """A Rich style word that names a colour: 'red', 'bright_green', 'color(5)', '#2ea043'."""
    if token == "default":
        return False
    try:
        RichColor.parse(token)
    except ColorParseError:
        return False
    return True


def colour_literals(path: Path) -> list[str]:
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        where = f"{path.name}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
            if HEX_OR_FUNCTION.search(text):
                found.append(f"{where}: {text!r}")
            elif any(_is_colour(word) for word in text.split()):
                found.append(f"{where}: {text!r} names a colour")
        elif (isinstance(node, ast.Tuple) and len(node.elts) == 3
              and all(isinstance(e, ast.Constant) and type(e.value) is int
                      and 0 <= e.value <= 255 for e in node.elts)):
            found.append(f"{where}: an RGB tuple")
    return found


def test_no_colour_literal_outside_the_palette() -> None:
    assert len(MODULES) > 10  # the scan looks where the UI is
    found = [hit for path in MODULES for hit in colour_literals(path)]
    assert found == [], "colours belong in console/ui/palette.py:\n" + "\n".join(found)


def test_the_scan_finds_what_it_looks_for(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text('A = "bold #2ea043"\nB = (59, 130, 196)\nC = "red"\n'
                      'D = "rgb({},{},{})"\nE = "#mig-title"\nF = (0, 2)\nG = "no agent"\n')
    assert [hit.split(":")[1] for hit in colour_literals(sample)] == ["1", "2", "3", "4"]


def test_the_stylesheet_uses_theme_variables_only() -> None:
    css = (UI / "pcteleport.tcss").read_text(encoding="utf-8")
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    bad: list[str] = []
    for prop, value in re.findall(r"([a-z-]+)\s*:\s*([^;{}]+);", css):
        for token in value.split():
            if token.startswith("$"):
                continue
            try:
                TextualColor.parse(token)
            except Exception:  # not a colour: a size, a keyword, a border style
                continue
            bad.append(f"{prop}: {value.strip()}")
    assert bad == [], "use theme variables ($primary, $error, ...):\n" + "\n".join(bad)


def _hue(colour: str) -> float:
    c = TextualColor.parse(colour)
    return colorsys.rgb_to_hls(c.r / 255, c.g / 255, c.b / 255)[0] * 360


@pytest.mark.parametrize("theme", ["textual-dark", "textual-light"])
@pytest.mark.parametrize(("role", "variable"), [("OK", "success"), ("WARN", "warning"),
                                                ("ERROR", "error"), ("INFO", "primary")])
def test_meanings_match_the_theme(theme: str, role: str, variable: str) -> None:
    ours = _hue(getattr(palette, role).hex)
    theirs = _hue(getattr(BUILTIN_THEMES[theme], variable))
    assert min(abs(ours - theirs), 360 - abs(ours - theirs)) < 30, (role, variable)


def test_every_role_is_a_colour() -> None:
    for name in dir(palette):
        value = getattr(palette, name)
        if isinstance(value, palette.Colour):
            assert RichColor.parse(value.hex).triplet == value.rgb, name
