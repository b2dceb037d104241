"""Issue 3's performance figure: a full map of a 1 GiB guest holding ~700 MB of page cache,
made by the kernel module in under 1 s of guest time (TCG). The userspace fallback's time is
printed beside it. Figures go to stdout (pytest -s) for the closing note."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from qemu_guest import Disk, QemuGuest, debian_guest_boot, make_ext4

from pcteleport.sites.agent_client import AgentClient

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

FILE_MIB, FILES = 10, 70  # 700 MiB of page cache


def test_module_maps_700mb_of_cache_and_prints_its_figures(tmp_path: Path) -> None:

    boot = debian_guest_boot()
    # Distinct pages (no holes: e2fsprogs leaves zero blocks unallocated), cheap to make.
    block = os.urandom(1 << 20)
    files = {
        f"f{i:02d}.bin": b"".join(i.to_bytes(2, "little") * 8 + block[16:] for _ in range(FILE_MIB))
        for i in range(FILES)
    }
    data = make_ext4(tmp_path / "big.raw", files, size_mib=FILES * FILE_MIB + 64)
    del files
    with QemuGuest(boot, tmp_path / "vm", memory_mib=1024, agent=True, timeout_s=900,
                   disks=[Disk(data, "big", readonly=True)]) as g:
        g.wait_for("PCTELEPORT-READY", timeout=90)
        t0 = time.monotonic()
        g.run("mkdir /mnt/big && mount -o ro /dev/disk/by-id/virtio-big /mnt/big && "
              "cat /mnt/big/*.bin > /dev/null", timeout=600)
        read_s = time.monotonic() - t0
        with AgentClient.connect_unix(g.agent_socket, timeout=600) as agent:
            module = agent.map("big", source="module")
            walk_ms = int(module.header["guest-walk-ns"]) / 1e6
            pages = int(module.header["pages"])
            t1 = time.monotonic()
            fallback = agent.map("big", source="fallback")
            fallback_host_s = time.monotonic() - t1
            stats_ms = int(g.run("grep ^walk_ns /proc/pcteleport/stats").split()[1]) / 1e6
            cpu_share = _agent_cpu_share(g, agent, seconds=12)
        cached = int(module.header["guest-cached"])
    data.unlink()  # 760 MiB; pytest keeps the last three runs' temp dirs
    print(f"\nFIGURES 1 GiB guest: read {FILES * FILE_MIB} MiB in {read_s:.1f} s; module map: "
          f"{cached} cached pages, {pages} restorable, walk {walk_ms:.0f} ms guest time, "
          f"agent total {module.header['elapsed-ms']} ms, {module.header['extents']} extents; "
          f"fallback map: {fallback.header['elapsed-ms']} ms guest, {fallback_host_s:.1f} s "
          f"wall, {fallback.header['pages']} pages; stats walk {stats_ms:.0f} ms; agent CPU "
          f"streaming composition at 1 s: {cpu_share:.2%}")
    assert pages * 4096 >= FILES * FILE_MIB * (1 << 20) * 0.95  # ~all of the files' pages
    assert fallback.header["pages"] == module.header["pages"]
    # Issue 3's targets (walk < 1 s, agent < 1 % of a CPU) are figures printed above, not
    # bounds: on two shared cores a timed bound fails with the machine's load, not the agent.
    assert walk_ms > 0 and 0 <= cpu_share < 1


def _agent_cpu_share(g: QemuGuest, agent: AgentClient, seconds: int) -> float:
    """CPU time of the agent process (guest clock) per second while it streams composition
    once a second, with its periodic module stats walk included."""
    pid = agent.hello()["pid"]

    def ticks() -> int:  # ns on the CPU (schedstat), finer than utime/stime ticks
        return int(g.run(f"cat /proc/{pid}/schedstat").split()[0])

    agent.request("watch", interval=1.0)
    try:
        agent.next_event(timeout=5)
        t0, c0 = time.monotonic(), ticks()
        for _ in range(seconds):
            agent.next_event(timeout=5)
        t1, c1 = time.monotonic(), ticks()
    finally:
        agent.request("unwatch")
    return (c1 - c0) / 1e9 / (t1 - t0)
