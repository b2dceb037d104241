"""The kernel module's rules (issue 12, item 6).

- The walk reschedules among the inodes it skips: a filesystem with very many page-less
  inodes must not hold s_inode_list_lock (a spinlock, so no rescheduling) from one end of its
  inode list to the other while another task waits to run.

The guest tests boot one Debian guest (TCG) with the module built from kmodule/ and run in CI
(they never skip there).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import require
from qemu_guest import Disk, QemuGuest, make_ext4

from guest import agent

PAGE = 4096
MANY_FILES = 100_000  # empty files on the "many" disk: inodes without a page-cache page
# The guest kernel's complaints that must never follow a walk.
KERNEL_COMPLAINTS = r"soft lockup|hard LOCKUP|BUG|Oops|WARNING|rcu.*stall|blocked for more"


# --- in a guest -------------------------------------------------------------------------------


class Guest:
    def __init__(self, qemu: QemuGuest, agent_client) -> None:
        self.qemu, self.agent = qemu, agent_client


def _many_empty_files(tmp: Path, count: int) -> Path:
    """An ext4 image holding ``count`` empty files (inodes, no data blocks)."""
    src = tmp / "many-src"
    for d in range(count // 1000):
        sub = src / f"d{d:03d}"
        sub.mkdir(parents=True)
        for i in range(1000):
            (sub / f"e{i:03d}").touch()
    image = tmp / "many.raw"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-N", str(count + 2048), "-m", "0",
                    "-L", "many", "-d", str(src), str(image), "160M"], check=True)
    shutil.rmtree(src)
    return image


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory):
    from console.errors import PcteleportError
    from console.sites import guestimage
    from console.sites.agent_client import AgentClient

    require(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86_64 is not installed")
    require(os.geteuid() == 0, "needs root (chroot to build the guest root filesystem)")
    try:
        boot = guestimage.debian_boot()
    except PcteleportError as exc:
        require(False, str(exc))
    tmp = tmp_path_factory.mktemp("kmodrules")
    rng = random.Random(12)
    data = make_ext4(tmp / "data.raw", {f"files/k{i}.bin": rng.randbytes(64 * PAGE + 100 * i)
                                        for i in range(4)}, size_mib=16)
    many = _many_empty_files(tmp, MANY_FILES)
    # One vCPU: the walk and the task that waits for it share it.
    qemu = QemuGuest(boot, tmp / "vm", memory_mib=768, smp=1, agent=True, timeout_s=1500,
                     disks=[Disk(data, "data", readonly=True), Disk(many, "many", readonly=True)])
    with qemu:
        qemu.wait_for("PCTELEPORT-READY", timeout=120)
        assert "PCTELEPORT-MODULE loaded" in qemu.console(), qemu.console()[-2000:]
        qemu.run("set -e; mkdir -p /mnt/data /mnt/many;"
                 "mount -t ext4 -o ro /dev/disk/by-id/virtio-data /mnt/data;"
                 "mount -t ext4 -o ro /dev/disk/by-id/virtio-many /mnt/many;"
                 "cat /mnt/data/files/* > /dev/null")
        client = AgentClient.connect_unix(qemu.agent_socket, timeout=120)
        try:
            yield Guest(qemu, client)
        finally:
            client.close()


@pytest.mark.qemu
@pytest.mark.slow
def test_walks_over_many_pageless_inodes_let_a_waiting_task_run(guest: Guest) -> None:
    """MANY_FILES empty files, all in the inode cache, no page cached: the walk skips them
    all. A SCHED_FIFO task waking every millisecond on the same (only) vCPU measures how late
    it runs. Were the skips made under the list lock from end to end, it would wait for the
    whole run of them (the walk's time on that filesystem); rescheduling among them, it waits
    far less, and the walk counts the times it let the lock go (lock_breaks)."""
    q = guest.qemu
    loaded = q.run(
        "python3 - <<'PYEOF'\n"
        "import os\n"
        "n = 0\n"
        "for d in os.scandir('/mnt/many'):\n"
        "    if d.is_dir():\n"
        "        for e in os.scandir(d.path):\n"
        "            os.stat(e.path)\n"
        "            n += 1\n"
        "print(n, open('/proc/sys/fs/inode-nr').read().split()[0])\n"
        "PYEOF", timeout=600)
    stated, in_cache = (int(w) for w in loaded.split())
    assert stated == MANY_FILES and in_cache >= MANY_FILES, loaded
    q.run("cat > /tmp/waker.py <<'PYEOF'\n"
          "import os, sys, time\n"
          "os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(50))\n"
          "period, worst, n = 0.001, 0.0, 0\n"
          "while not os.path.exists(sys.argv[1]):\n"
          "    t = time.monotonic()\n"
          "    time.sleep(period)\n"
          "    worst = max(worst, time.monotonic() - t - period)\n"
          "    n += 1\n"
          "print(round(worst * 1e9), n)\n"
          "PYEOF")
    out = q.run(
        "rm -f /tmp/stop; dmesg -c > /dev/null\n"
        "python3 /tmp/waker.py /tmp/stop > /tmp/waker.out & w=$!\n"
        "sleep 1\n"
        "for i in 1 2 3 4 5; do\n"
        "    cat /proc/pcteleport/stats > /tmp/stats.$i\n"
        "    cat /proc/pcteleport/map > /dev/null\n"
        "done\n"
        "touch /tmp/stop; wait $w\n"
        "echo WAKER $(cat /tmp/waker.out)\n"
        "for i in 1 2 3 4 5; do echo STATS; cat /tmp/stats.$i; done\n"
        "echo kernel-complaints:\n"
        f"dmesg | grep -E '{KERNEL_COMPLAINTS}' || true\n", timeout=600)
    worst_ns, wakeups = (int(w) for w in re.search(r"^WAKER (\d+) (\d+)$", out, re.M).groups())
    walks = [agent._module_counters(text)[0]
             for text in out.split("kernel-complaints:")[0].split("STATS\n")[1:]]
    assert len(walks) == 5, out
    walk_ns = sorted(w["walk_ns"] for w in walks)
    lock_breaks = [w.get("lock_breaks") for w in walks]
    print(f"\nFIGURES {MANY_FILES} page-less inodes: stats walks {walk_ns} ns, lock_breaks "
          f"{lock_breaks}; waiting task: {wakeups} wake-ups, worst {worst_ns / 1e6:.2f} ms late")
    assert out.split("kernel-complaints:")[1].strip() == "", out
    assert wakeups > 100, out
    assert all(b is not None and b > 0 for b in lock_breaks), out
    # A run of skipped inodes no longer holds the waiting task up for the whole walk. (Made
    # under the lock from end to end, the skips kept it waiting longer than a median walk:
    # 127 ms against walks of 68-145 ms, measured with the module before the change.)
    assert worst_ns < walk_ns[len(walk_ns) // 2] / 2, out
