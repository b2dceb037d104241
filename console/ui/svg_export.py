"""SVG screenshots that read the same in every SVG viewer as the console does in a terminal.

Rich (under Textual's `export_screenshot`) writes one `<text>` element per styled run, its spaces
as `&#160;`, placed by `x` and stretched to `textLength`. A run that begins with the spaces that
separate it from the run before (`"  recording"` after the bold `"tokyo"`) reads `tokyorecording`
in a viewer that drops an element's leading whitespace, and a viewer that collapses whitespace
closes the gaps inside a run (`"every 600 s  sort: name"`). `legible_svg` moves each element's
leading and trailing spaces into its position and splits it at every gap of two or more spaces:
each piece then starts and ends with a glyph and stands at the column the terminal shows it in,
whatever a viewer does with whitespace. Backgrounds are separate `<rect>`s and stay as they are.
"""

from __future__ import annotations

import html
import re

from rich.cells import cell_len

NBSP = "\xa0"
# Rich's own tag (rich.console.Console.export_svg): <text class x y textLength clip-path>.
_TEXT = re.compile(r'<text class="(?P<cls>[^"]*)" x="(?P<x>[^"]*)" y="(?P<y>[^"]*)" '
                   r'textLength="(?P<len>[^"]*)" clip-path="(?P<clip>[^"]*)">(?P<body>[^<]*)'
                   r"</text>")
# What stays in one element: glyphs joined by single spaces.
_PIECE = re.compile(f"[^{NBSP}]+(?:{NBSP}[^{NBSP}]+)*")


def _number(value: float) -> str:
    return format(round(value, 4), "g")  # as rich writes them: 85.4, not 85.39999999999999


def _split(match: re.Match[str]) -> str:
    text = html.unescape(match["body"]).replace(" ", NBSP)
    pieces = list(_PIECE.finditer(text))
    if len(pieces) == 1 and pieces[0].group() == text:
        return match.group()  # nothing to move
    x, width = float(match["x"]), float(match["len"])
    char_width = width / len(text)  # rich: textLength = char width × characters
    out = []
    for piece in pieces:
        word = piece.group()
        left = x + cell_len(text[:piece.start()]) * char_width  # rich advances x by cells
        body = html.escape(word.replace(NBSP, " ")).replace(" ", "&#160;")
        out.append(f'<text class="{match["cls"]}" x="{_number(left)}" y="{match["y"]}" '
                   f'textLength="{_number(char_width * len(word))}" '
                   f'clip-path="{match["clip"]}">{body}</text>')
    return "".join(out)


def legible_svg(svg: str) -> str:
    """`svg` (from rich's export) with no text element that starts or ends with a space or
    holds a gap of two or more spaces; what it shows is unchanged."""
    return _TEXT.sub(_split, svg)
