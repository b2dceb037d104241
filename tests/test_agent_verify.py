"""The agent's post-migration check and the drop-cache mode's first step, in a real guest:
`verify` compares every cached page of a disk's files with the disk's own blocks (read past
the cache), and must catch a cached page that no longer matches the disk; `drop_caches`
empties the clean page cache."""

from __future__ import annotations

import random
import subprocess
from pathlib import Path

import pytest
from qemu_guest import Disk, QemuGuest, debian_guest_boot

from pcteleport.guest import agent
from pcteleport.sites.agent_client import AgentClient

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

PAGE = 4096


def _ext4_1k(tmp: Path, files: dict[str, bytes], size_mib: int) -> Path:
    src = tmp / "src"
    for rel, body in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(body)
    image = tmp / "data.raw"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "1024", "-m", "0", "-d", str(src),
                    str(image), f"{size_mib}M"], check=True)
    return image


def test_segments_cut_pages_at_extent_edges() -> None:
    # 1 KiB-block file: logical 0-6 KiB at disk 100 KiB, then 6-12 KiB at disk 500 KiB.
    k = 1024
    extents = [(0, 100 * k, 6 * k), (6 * k, 500 * k, 6 * k)]
    assert agent._verify_segments([0, 1, 2], extents, 10 * k, 1 << 20) == [
        (0, 100 * k, 6 * k), (6 * k, 500 * k, 4 * k)]  # page 1 is cut; page 2 ends at EOF
    assert agent._verify_segments([1], extents, 12 * k, 1 << 20) == [
        (4 * k, 104 * k, 2 * k), (6 * k, 500 * k, 2 * k)]
    # A hole (no extent) has nothing to compare; max_bytes bounds a segment.
    assert agent._verify_segments([0, 1], [(4 * k, 0, 4 * k)], 8 * k, 1 << 20) == [
        (4 * k, 0, 4 * k)]
    assert agent._verify_segments([0, 1], [(0, 0, 8 * k)], 8 * k, 4 * k) == [
        (0, 0, 4 * k), (4 * k, 4 * k, 4 * k)]


def test_verify_finds_a_cached_page_that_differs_from_disk(tmp_path) -> None:

    boot = debian_guest_boot()
    rng = random.Random(11)
    files = {f"files/v{i}.bin": rng.randbytes((1 << 20) + 1000 * i) for i in range(12)}
    # 1 KiB blocks: block groups of 8 MiB, so some file pages straddle two extents.
    data = _ext4_1k(tmp_path, files, size_mib=24)
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
            assert not ok["sampled"] and ok["files_on_disk"] == len(files)
            # A sample: files drawn at random, a random run of pages in one bigger than what
            # is left to check (a database file must not mean a full check).
            few = agent.request("verify", disk="data", sample=25)
            assert few["sampled"] and few["files"] == 1 and few["mismatches"] == []
            assert few["pages_checked"] == 25
            more = agent.request("verify", disk="data", sample=300)
            assert more["files"] == 2 and more["pages_checked"] == 300

            # Rewrite the first block of v3.bin's page 5 on the device, past the page cache:
            # the cached page is now stale, which is what a wrongly restored page looks like.
            where = g.run(
                "python3 -c \"import os,fcntl,struct;"
                "fd=os.open('/mnt/data/files/v3.bin',os.O_RDONLY);"
                "bs=struct.unpack('i',fcntl.ioctl(fd,2,struct.pack('i',0)))[0];"
                "print(struct.unpack('i',fcntl.ioctl(fd,1,struct.pack('i',5*4096//bs)))[0]*bs,"
                "bs)\"").split()
            offset, block = int(where[0]), int(where[1])
            assert block == 1024
            g.run("python3 -c \"import os,mmap;"
                  "fd=os.open('/dev/disk/by-id/virtio-data',os.O_WRONLY|os.O_DIRECT);"
                  f"b=mmap.mmap(-1,{block});b.write(os.urandom({block}));"
                  f"os.pwrite(fd,b,{offset})\"")
            bad = agent.request("verify", disk="data")
            assert len(bad["mismatches"]) == 1, bad
            assert "v3.bin page 5 " in bad["mismatches"][0]

            dropped = agent.request("drop_caches")
            assert dropped["cached_after"] < dropped["cached_before"] - (4 << 20)
            assert dropped["zeroed"] > 64 << 20  # freed memory zeroed: QEMU sends zero pages
            after = agent.request("verify", disk="data")
            assert after["pages_checked"] < ok["pages_checked"] // 4

            # A file being written: its page is dirty in the cache (not yet on the disk). That
            # is no mismatch: verify writes it back and reads both again.
            g.run("mount -o remount,rw /mnt/data && cat /mnt/data/files/v4.bin > /dev/null && "
                  "python3 -c \"import os;fd=os.open('/mnt/data/files/v4.bin',os.O_WRONLY);"
                  "os.pwrite(fd,b'written since'*300,8192)\" && grep Dirty: /proc/meminfo")
            writing = agent.request("verify", disk="data")
            assert writing["mismatches"] == [], writing
            on_disk = g.run("dd if=/dev/disk/by-id/virtio-data bs=1 count=0 2>/dev/null; "
                            "python3 -c \"import os;fd=os.open('/mnt/data/files/v4.bin',"
                            "os.O_RDONLY|os.O_DIRECT);import mmap;b=mmap.mmap(-1,4096);"
                            "os.preadv(fd,[b],8192);print(b[:13].decode())\"")
            assert on_disk.strip().splitlines()[-1] == "written since"
        finally:
            agent.close()
