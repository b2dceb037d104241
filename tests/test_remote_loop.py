"""The SSH loop thread ends cleanly: nothing it ran is left to be destroyed at exit.

CI found `migrate` interrupted mid-copy printing asyncio's "Task was destroyed but it is
pending!" after its last line (an SSH pump whose stderr never ended)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import asyncio, gc
    from pcteleport.sites.remote import LoopThread

    loop = LoopThread()
    ended = []

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            ended.append(True)

    async def spawn() -> None:
        asyncio.ensure_future(forever())  # nothing keeps it but the loop, like a pump's err()

    loop.call(spawn())
    loop.close()
    print("cleaned up" if ended else "left running")
    del loop
    gc.collect()
""")


def test_close_cancels_what_still_runs_and_exit_prints_nothing() -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "cleaned up"
    assert proc.stderr == ""
