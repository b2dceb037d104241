"""The guest harness end to end: a TCG guest reads files into its page cache, is migrated to
a file with QMP, and a second QEMU started with -incoming continues the same guest."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
from conftest import require_guest_kernel
from qemu_guest import Disk, QemuGuest, make_ext4

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

# Mount the data disk read-only and pull every file through the page cache.
READ_FILES = """#!/bin/sh
mkdir -p /mnt
mount -t ext4 -o ro /dev/disk/by-id/virtio-data /mnt || exit 1
echo "CHECKSUM $(cat /mnt/files/* | sha256sum | cut -d' ' -f1)"
"""


def test_boot_read_migrate_to_file_and_resume(tmp_path: Path) -> None:
    from pcteleport import guestimage

    kernel = require_guest_kernel()
    rng = random.Random(1234)
    files = {f"files/f{i:02d}.bin": rng.randbytes(4 << 20) for i in range(14)}  # 56 MiB
    expected = hashlib.sha256(b"".join(files[k] for k in sorted(files))).hexdigest()
    data = make_ext4(tmp_path / "data.raw", files, size_mib=72)
    boot = guestimage.stage1_boot(READ_FILES, kernel=kernel)
    disks = [Disk(data, serial="data")]
    stream = tmp_path / "stream.bin"

    with QemuGuest(boot, tmp_path / "src", memory_mib=256, disks=disks) as src:
        line = src.wait_for("CHECKSUM", timeout=90)
        assert line.split()[-1] == expected
        assert src.wait_for("PCTELEPORT-SCENARIO-EXIT").endswith(" 0")
        cached_kib = int(src.run("awk '/^Cached:/ {print $2}' /proc/meminfo"))
        assert cached_kib * 1024 >= 56 << 20, cached_kib
        info = src.migrate(f"exec:cat > {stream}")
        assert info["status"] == "completed"
        assert src.qmp("query-status")["status"] == "postmigrate"

    assert stream.read_bytes()[:8] == b"QEVM\x00\x00\x00\x03"
    with QemuGuest(boot, tmp_path / "dst", memory_mib=256, disks=disks,
                   incoming=f"exec:cat {stream}") as dst:
        dst.wait_running()
        # The same guest continues: its shell answers and the files still read back the same.
        again = dst.run("cat /mnt/files/* | sha256sum | cut -d' ' -f1").strip()
        assert again == expected
        cached_after = int(dst.run("awk '/^Cached:/ {print $2}' /proc/meminfo"))
        assert cached_after * 1024 >= 56 << 20  # the page cache came along with the memory
        assert "PCTELEPORT-READY" not in dst.console()  # resumed, not rebooted


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_debian_guest_with_agent_migrates_over_tcp(tmp_path: Path) -> None:
    """The Debian guest (agent + kernel module) migrates over TCP; at the destination its
    agent answers and its restorable map is the same pages: the page cache came along."""
    from pcteleport import guestimage
    from pcteleport.sites.agent_client import AgentClient

    kernel = require_guest_kernel()
    rng = random.Random(99)
    files = {f"files/g{i}.bin": rng.randbytes(1 << 20) for i in range(8)}
    data = make_ext4(tmp_path / "data.raw", files, size_mib=24)
    boot = guestimage.debian_boot(kernel=kernel)
    disks = [Disk(data, serial="data", readonly=True)]
    with QemuGuest(boot, tmp_path / "src", memory_mib=384, disks=disks, agent=True) as src:
        src.wait_for("PCTELEPORT-READY", timeout=90)
        src.run("mkdir /mnt/data && mount -o ro /dev/disk/by-id/virtio-data /mnt/data && "
                "cat /mnt/data/files/* > /dev/null")
        with AgentClient.connect_unix(src.agent_socket) as agent:
            before = agent.map("data")
        assert int(before.header["pages"]) == 8 * 256
        port = _free_port()
        with src.destination(tmp_path / "dst", f"tcp:127.0.0.1:{port}") as dst:
            info = src.migrate(f"tcp:127.0.0.1:{port}")
            assert info["status"] == "completed"
            dst.wait_running()
            with AgentClient.connect_unix(dst.agent_socket) as agent:
                after = agent.map("data")
                assert agent.hello()["source"] == "module"
            strip = [line for line in before.text.splitlines() if not line.startswith("#")]
            assert [line for line in after.text.splitlines() if not line.startswith("#")] == strip
            sums = dst.run("cat /mnt/data/files/* | sha256sum").split()[0]
            assert sums == hashlib.sha256(b"".join(files[k] for k in sorted(files))).hexdigest()


def test_harness_reports_failures_and_cleans_up(tmp_path: Path) -> None:
    from qemu_guest import CommandResult, GuestError

    from pcteleport import guestimage

    kernel = require_guest_kernel()
    boot = guestimage.stage1_boot(None, kernel=kernel)
    bad = QemuGuest(boot, tmp_path / "bad", extra_args=("-bogus-option",))
    with pytest.raises(GuestError, match="bogus-option"), bad:
        pass
    assert bad.proc is not None and bad.proc.poll() is not None  # no qemu left behind

    with QemuGuest(boot, tmp_path / "ok", machine="q35", smp=2) as g:
        g.wait_for("PCTELEPORT-READY", timeout=60)
        assert g.run("grep -c ^processor /proc/cpuinfo").strip() == "2"
        assert g.run("echo out; echo err >&2; exit 3", check=False) == CommandResult(
            3, "out\nerr\n")
        with pytest.raises(GuestError, match="exited 3"):
            g.run("exit 3")
        with pytest.raises(GuestError, match="timed out"):
            g.wait_for("NEVER-PRINTED", timeout=1)
        proc = g.proc
    assert proc is not None and proc.poll() is not None
