"""The composition bar: what a guest's memory holds, as one line of coloured cells."""

from __future__ import annotations

from rich.text import Text

from pcteleport.records import Composition
from pcteleport.ui import palette
from pcteleport.ui.palette import Colour

# (label, glyph, colour): kernel and free memory share a colour and differ by glyph, so the bar
# still reads without colour.
SEGMENTS: tuple[tuple[str, str, Colour], ...] = (
    ("restorable", "█", palette.RESTORABLE),
    ("clean", "█", palette.CLEAN_CACHE),
    ("dirty", "█", palette.DIRTY_CACHE),
    ("anon", "█", palette.ANON),
    ("kernel", "▓", palette.KERNEL),
    ("free", "░", palette.FREE),
)


def segment_sizes(c: Composition) -> list[int]:
    """Bytes per SEGMENTS entry; restorable is carved out of the clean cache."""
    restorable = min(c.restorable, c.cache_clean)
    return [
        restorable,
        c.cache_clean - restorable,
        c.cache_dirty + c.cache_writeback,
        c.anon + c.shmem,
        c.kernel,
        c.free,
    ]


def cells(sizes: list[int], width: int) -> list[int]:
    """Split `width` cells in proportion to `sizes` (largest remainder), so the bar always
    fills exactly `width` and any non-zero part gets at least one cell when there is room."""
    total = sum(max(0, s) for s in sizes)
    if total <= 0 or width <= 0:
        return [0] * len(sizes)
    exact = [max(0, s) * width / total for s in sizes]
    out = [int(e) for e in exact]
    for i in sorted(range(len(sizes)), key=lambda i: exact[i] - out[i], reverse=True):
        if sum(out) >= width:
            break
        out[i] += 1
    # Give a visible cell to tiny non-zero parts, taking it from the largest part.
    for i, s in enumerate(sizes):
        if s > 0 and out[i] == 0 and width >= len(sizes):
            j = max(range(len(out)), key=lambda k: out[k])
            if out[j] > 1:
                out[j] -= 1
                out[i] += 1
    return out


def composition_bar(c: Composition | None, width: int) -> Text:
    if c is None:
        return Text("·" * width, style="dim")
    text = Text()
    for (_, glyph, colour), n in zip(SEGMENTS, cells(segment_sizes(c), width), strict=True):
        text.append(glyph * n, style=colour.hex)
    return text


def legend() -> Text:
    text = Text()
    for label, glyph, colour in SEGMENTS:
        text.append(glyph, style=colour.hex)
        text.append(f" {label}  ")
    return text
