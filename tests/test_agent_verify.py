"""The agent's post-migration check and the drop-cache mode's first step, in a real guest:
`verify` compares every cached page of a disk's files with the disk's own blocks (read past
the cache), and must catch a cached page that no longer matches the disk; `drop_caches`
empties the clean page cache."""

from __future__ import annotations

import os
import random
import shutil

import pytest
from conftest import require
from qemu_guest import Disk, QemuGuest, make_ext4

from console.sites.agent_client import AgentClient

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

PAGE = 4096


def test_verify_finds_a_cached_page_that_differs_from_disk(tmp_path) -> None:
    from console.errors import PcteleportError
    from console.sites import guestimage

    require(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86_64 is not installed")
    require(os.geteuid() == 0, "needs root (chroot to build the guest root filesystem)")
    try:
        boot = guestimage.debian_boot()
    except PcteleportError as exc:
        require(False, str(exc))
    rng = random.Random(11)
    files = {f"files/v{i}.bin": rng.randbytes((1 << 20) + 1000 * i) for i in range(6)}
    data = make_ext4(tmp_path / "data.raw", files, size_mib=24)
    with QemuGuest(boot, tmp_path / "vm", memory_mib=384, disks=[Disk(data, "data")],
                   agent=True, timeout_s=600) as g:
        g.wait_for("PCTELEPORT-READY", timeout=120)
        g.run("mkdir -p /mnt/data && mount -t ext4 -o ro /dev/disk/by-id/virtio-data /mnt/data"
              " && cat /mnt/data/files/* > /dev/null")
        agent = AgentClient.connect_unix(g.agent_socket, timeout=120)
        try:
            ok = agent.request("verify", disk="data")
            assert ok["mismatches"] == []
            want = sum((len(b) + PAGE - 1) // PAGE for b in files.values())
            assert ok["files"] == len(files)
            assert ok["pages_checked"] >= want

            # Rewrite one block of v3.bin on the device, past the page cache: the cached
            # page is now stale, which is what a wrongly restored page looks like.
            offset = int(g.run(
                "python3 -c \"import os,fcntl,struct;"
                "fd=os.open('/mnt/data/files/v3.bin',os.O_RDONLY);"
                "print(struct.unpack('i',fcntl.ioctl(fd,1,struct.pack('i',5)))[0]*4096)\""
            ).strip())
            g.run("python3 -c \"import os,mmap;"
                  "fd=os.open('/dev/disk/by-id/virtio-data',os.O_WRONLY|os.O_DIRECT);"
                  "b=mmap.mmap(-1,4096);b.write(os.urandom(4096));"
                  f"os.pwrite(fd,b,{offset})\"")
            bad = agent.request("verify", disk="data")
            assert len(bad["mismatches"]) == 1, bad
            assert "v3.bin page 5" in bad["mismatches"][0]

            dropped = agent.request("drop_caches")
            assert dropped["cached_after"] < dropped["cached_before"] - (4 << 20)
            after = agent.request("verify", disk="data")
            assert after["pages_checked"] < ok["pages_checked"] // 4
        finally:
            agent.close()
