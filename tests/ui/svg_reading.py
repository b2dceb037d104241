"""An SVG screenshot read back as lines of text, as two kinds of viewer show it.

`shown` places each `<text>` element's text, spaces and all, at its column: the terminal's
picture. `harsh` does what some viewers and text extractors do with whitespace: drop an
element's leading and trailing spaces and collapse the runs inside it to one. Where the two
differ, a reader of the screenshot sees something the console does not show (issue 15:
`tokyorecording`, `every 600 ssort: name`)."""

from __future__ import annotations

import difflib
import html
import re

from rich.cells import cell_len

_TEXT = re.compile(r'<text class="[^"]*-(?P<cls>r\d+)" x="(?P<x>[^"]*)" y="(?P<y>[^"]*)" '
                   r'textLength="(?P<len>[^"]*)"[^>]*>(?P<body>[^<]*)</text>')


def _place(svg: str, harsh: bool) -> list[str]:
    rows: dict[float, list[tuple[int, str]]] = {}
    for m in _TEXT.finditer(svg):
        text = html.unescape(m["body"]).replace("\xa0", " ")
        column = round(float(m["x"]) / (float(m["len"]) / len(text)))
        if harsh:
            text = re.sub(r"\s+", " ", text.strip())
        rows.setdefault(float(m["y"]), []).append((column, text))
    lines = []
    for _, runs in sorted(rows.items()):
        cells: list[str] = []  # one entry a terminal cell; a wide glyph's second cell is ""
        for column, text in sorted(runs):
            glyphs = [part for ch in text for part in ([ch] if cell_len(ch) < 2 else [ch, ""])]
            cells.extend(" " * (column + len(glyphs) - len(cells)))
            cells[column:column + len(glyphs)] = glyphs
        lines.append("".join(cells).rstrip())
    return lines


def shown(svg: str) -> list[str]:
    return _place(svg, harsh=False)


def harsh(svg: str) -> list[str]:
    return _place(svg, harsh=True)


def differences(svg: str) -> list[tuple[str, str]]:
    """(terminal line, harsh viewer's line) for every line the two read differently."""
    return [(a, b) for a, b in zip(shown(svg), harsh(svg), strict=True) if a != b]


_STYLE = re.compile(r"\.[\w-]*-(?P<cls>r\d+) \{ (?P<css>[^}]*)\}")


def _styles(svg: str) -> list[list[tuple[float, str]]]:
    """Per screen row, (x, the run's CSS) of each run: what `shown` drops (colours, bold)."""
    css = {m["cls"]: m["css"].strip() for m in _STYLE.finditer(svg)}
    rows: dict[float, list[tuple[float, str]]] = {}
    for m in _TEXT.finditer(svg):
        rows.setdefault(float(m["y"]), []).append((float(m["x"]), css.get(m["cls"], m["cls"])))
    return [sorted(runs) for _, runs in sorted(rows.items())]


def explain(expected: str, actual: str) -> str:
    """What a failed snapshot shows differently, as text a CI log can hold: the rows whose
    words differ (a unified diff), else the rows whose colours differ, naming the columns."""
    want, got = shown(expected), shown(actual)
    if want != got:
        return "\n".join(difflib.unified_diff(want, got, "snapshot", "now", lineterm="", n=1))
    lines = []
    for row, (a, b) in enumerate(zip(_styles(expected), _styles(actual), strict=False)):
        if a != b:
            cols = sorted({round(x / 12.2) for x, _ in set(a) ^ set(b)})
            lines.append(f"row {row} ({got[row] if row < len(got) else ''!r}): styles differ "
                         f"at columns {cols[:12]}")
    return "\n".join(lines) or "same words and styles: the SVGs differ elsewhere (size, title)"
