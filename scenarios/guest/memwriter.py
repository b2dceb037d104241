"""Rewrites memory at a steady rate and checks, before every rewrite, that each page still holds
what it last wrote there: a migration that loses a dirty page shows here as a stale stamp.

With --hot-mib it also keeps a second buffer hot: between batches, every page of it is written
over and over at C speed (one strided slice assignment per pass), the pattern that made QEMU
7.2's TCG lose pages in every migration (hundreds per 256 MiB guest, measured). Those writes are
not checked here: the host's RAM comparison (`bench soak --compare-ram`) is their oracle.

Each page of a buffer of --mib MiB starts with a stamp (page index, write count). The program
walks the pages in order, --rate MiB/s: read the stamp, compare it with the count it remembers
(kept in a second array, so a lost page of either shows as a mismatch), write the next count.
Per second: {"t", "pages_written", "lost"} (lost: stale stamps found that second). Every stale
stamp is also printed to stderr. Runs inside the guest: Python >= 3.9 standard library only."""

from __future__ import annotations

import argparse
import os
import struct
import sys
import time
from array import array

from persecond import PerSecond, open_output

PAGE = 4096
STAMP = struct.Struct("<QQ")


class StampedPages:
    """A buffer whose every page carries (index, count); `rewrite(i)` checks page i still holds
    the count last written there, then writes the next one. Returns False for a stale page."""

    def __init__(self, pages: int) -> None:
        self.pages = pages
        self.buf = bytearray(pages * PAGE)
        self.counts = array("Q", [0]) * pages
        for i in range(pages):  # touch every page: the buffer is real memory from the start
            STAMP.pack_into(self.buf, i * PAGE, i, 0)

    def rewrite(self, i: int) -> bool:
        seen = STAMP.unpack_from(self.buf, i * PAGE)
        fresh = seen == (i, self.counts[i])
        if not fresh:
            sys.stderr.write(f"stale page {i}: holds {seen}, expected ({i}, {self.counts[i]})\n")
            sys.stderr.flush()
        self.counts[i] += 1
        STAMP.pack_into(self.buf, i * PAGE, i, self.counts[i])
        # more of the page changes too, so it is never a zero or duplicate page
        self.buf[i * PAGE + 16:i * PAGE + 24] = struct.pack("<d", time.time())
        return fresh


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=64, help="buffer size (MiB)")
    ap.add_argument("--rate", type=float, default=4.0, help="MiB rewritten per second")
    ap.add_argument("--hot-mib", type=int, default=0,
                    help="a buffer written over and over between batches (MiB; 0: none)")
    ap.add_argument("--duration", type=float, default=0.0, help="seconds (0: until stopped)")
    ap.add_argument("--out", default="-")
    args = ap.parse_args()

    pages = StampedPages(args.mib * 256)
    hot = bytearray(args.hot_mib << 20)
    hot_pages = len(hot) // PAGE
    if hot_pages:
        os.nice(19)  # busy on purpose: the agent and the guest's own work go first
    per = PerSecond(open_output(args.out))
    batch = max(1, int(args.rate * 256 / 50))  # 50 batches a second
    state = {"next": 0, "t": time.monotonic()}

    def step() -> None:
        for _ in range(batch):
            i = state["next"]
            state["next"] = (i + 1) % pages.pages
            if not pages.rewrite(i):
                per.add("lost")
        per.add("pages_written", batch)
        state["t"] += 1 / 50
        while hot_pages and time.monotonic() < state["t"]:
            hot[::PAGE] = bytes([int(state["t"] * 50) & 255]) * hot_pages
            per.add("hot_passes")
        delay = state["t"] - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            state["t"] = time.monotonic()  # behind (a pause): carry on at the rate from now

    return per.run_until_stopped(step, args.duration)


if __name__ == "__main__":
    sys.exit(main())
