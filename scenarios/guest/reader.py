"""The paper's measure: file-read throughput in 4 KiB blocks per second.

Reads random 64 KiB extents (16 blocks) of the files under ROOT, files chosen in proportion to
their size, through the page cache (plain read(), no O_DIRECT): a warm cache answers at memory
speed, a cold one at disk speed, so a dropped or lost cache shows as a dip until it refills.
Runs inside the guest: Python >= 3.9 standard library only."""

from __future__ import annotations

import argparse
import bisect
import os
import random
import sys

from persecond import PerSecond, open_output

BLOCK = 4096
EXTENT_BLOCKS = 16


def list_files(roots: list[str]) -> tuple[list[str], list[int]]:
    """Files under `roots` and the running total of their sizes in blocks."""
    paths: list[str] = []
    ends: list[int] = []
    total = 0
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            for name in sorted(files):
                path = os.path.join(dirpath, name)
                try:
                    blocks = os.stat(path).st_size // BLOCK
                except OSError:
                    continue
                if blocks > 0:
                    total += blocks
                    paths.append(path)
                    ends.append(total)
    return paths, ends


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("roots", nargs="+", help="directories (or files) to read")
    p.add_argument("--out", default="-", help="JSON lines, one per second (default stdout)")
    p.add_argument("--duration", type=float, default=0, help="seconds (default: until SIGTERM)")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    paths, ends = list_files(args.roots)
    if not paths:
        print(f"reader: no readable files under {' '.join(args.roots)}", file=sys.stderr)
        return 1
    rng = random.Random(args.seed)
    meter = PerSecond(open_output(args.out))

    def step() -> None:
        pick = rng.randrange(ends[-1])
        i = bisect.bisect_right(ends, pick)
        first = ends[i - 1] if i else 0
        blocks = ends[i] - first
        start = rng.randrange(max(1, blocks - EXTENT_BLOCKS + 1))
        with open(paths[i], "rb", buffering=0) as f:
            f.seek(start * BLOCK)
            data = f.read(EXTENT_BLOCKS * BLOCK)
        meter.add("blocks", len(data) // BLOCK)

    return meter.run_until_stopped(step, args.duration)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
