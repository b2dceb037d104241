"""The relays' malloc thresholds (console/teleport/heap.py): set on glibc, a no-op elsewhere."""

from __future__ import annotations

import platform
import subprocess
import sys


def test_keep_freed_memory_sets_glibc_thresholds_in_a_fresh_process():
    # In a child: the thresholds are the process's, and this one is the test runner's.
    code = ("from pcteleport.teleport import heap\n"
            "print(heap.keep_freed_memory(), heap.keep_freed_memory())\n"
            "blocks = [bytes(1 << 20) for _ in range(8)]\n"  # the heap still serves big blocks
            "print(sum(map(len, blocks)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    on_glibc = platform.libc_ver()[0] == "glibc"
    assert out[:2] == [str(on_glibc)] * 2
    assert out[2] == str(8 << 20)
