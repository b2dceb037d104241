"""Every colour the console draws from Python, named by what it means.

The stylesheet (pcteleport.tcss) colours widgets with theme variables only; what Python draws —
Rich styles in tables and text, plotext lines — cannot follow a theme variable, so it takes its
colours from here and nowhere else (tests/ui/test_palette.py fails on a colour literal in any
other UI module). The tones are mid-tones that read on dark and light themes alike; the
semantic ones are matched in hue to the Textual theme's $success, $warning, $error and $primary
(the same test checks it), so a green "ok" in a table agrees with a green success toast.

Use `.hex` in a Rich style ("bold " + OK.hex) and `.rgb` for plotext.
"""

from __future__ import annotations

from typing import NamedTuple

from pcteleport.records import Mode, Result


class Colour(NamedTuple):
    r: int
    g: int
    b: int

    @property
    def hex(self) -> str:
        """As a Rich style: '#2ea043'."""
        return f"#{self.r:02x}{self.g:02x}{self.b:02x}"

    @property
    def rgb(self) -> tuple[int, int, int]:
        """As plotext takes it."""
        return (self.r, self.g, self.b)


# --- the tones -----------------------------------------------------------------------------
GREEN = Colour(46, 160, 67)
BLUE = Colour(59, 130, 196)
AMBER = Colour(210, 153, 34)
RED = Colour(229, 83, 75)
PURPLE = Colour(168, 85, 199)
GREY = Colour(139, 139, 139)

# --- what they mean ------------------------------------------------------------------------
OK = GREEN  # matches the theme's $success
WARN = AMBER  # $warning
ERROR = RED  # $error
INFO = BLUE  # $primary
MUTED = GREY

#: a phase the migration has passed (phase timeline)
PHASE_REACHED = OK

#: migration modes (compare table and chart)
MODE: dict[Mode, Colour] = {
    Mode.STOCK: GREY,
    Mode.DROP_CACHE: AMBER,
    Mode.ZSTD: PURPLE,
    Mode.TELEPORT: GREEN,
}

#: composition categories (the composition bar, its legend and the history plot)
RESTORABLE = GREEN
CLEAN_CACHE = BLUE
DIRTY_CACHE = AMBER
ANON = PURPLE
KERNEL = GREY
FREE = GREY

#: page counters of a migration: teleported pages are restored from the destination's replica,
#: zero pages cost nothing, sent pages cross the WAN
TELEPORTED = RESTORABLE
ZERO = GREY
SENT = BLUE

#: migration rate plot
GUEST_RATE = PURPLE
WAN_RATE = BLUE

#: how a migration ended
RESULT: dict[Result, Colour] = {Result.OK: OK, Result.FAILED: ERROR, Result.ABORTED: WARN}
