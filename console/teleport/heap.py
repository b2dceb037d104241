"""The C heap of a process that streams guest memory: keep the memory it frees for reuse.

The codec moves big blocks through the heap one after another: QEMU's stream comes in 1 MiB
reads, each DATA frame's literal bytes are joined (~512 KiB) and compressed into another block.
With glibc's defaults such a block, once freed, goes back to the kernel (blocks over a dynamic
threshold are mmap'd and unmapped; a heap top that grows past another is trimmed), so the next
one is fresh memory and its every page a page fault. On the relay-test snapshot that was
~10,000 page faults per encode of its 123 MB, ~10% of the encoder's CPU, all of it kernel time.

`keep_freed_memory` raises both thresholds once for the process: blocks up to 32 MiB come from
the heap and up to 128 MiB of freed heap stays mapped, to be reused by the next block. A
relay's heap then stays at its peak (its kept pages and a few frames) until it exits. The
relays call it, and so do `codec encode` / `decode` and `bench codec`, which measures them.
"""

from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1  # mallopt parameters (glibc's malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # the largest glibc takes on 64-bit
TRIM_THRESHOLD = 128 << 20


def keep_freed_memory() -> bool:
    """Set the process's malloc thresholds (see the module docstring). True if they were set;
    False where the C library has no mallopt (not glibc): nothing changes there."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # Both: the trim threshold alone turns glibc's moving mmap threshold off at its 128 KiB
    # start, and every block over that would be mmap'd (measured: five times the page faults).
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
