"""Teleport migration of a real QEMU guest: QEMU -> relay send -> rate-limited link ->
relay recv -> QEMU -incoming, and the guest runs on with its page cache intact."""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
from pathlib import Path

import pytest
from conftest import require_guest_kernel
from qemu_guest import Disk, QemuGuest, make_ext4
from test_relay import Relay, free_port
from throttle import ThrottledLink

from pcteleport.bench import codec as codec_bench
from pcteleport.teleport import offline
from pcteleport.teleport.disk import DiskImage
from pcteleport.teleport.layout import RamLayout
from pcteleport.teleport.mapfile import RestorableMap
from pcteleport.teleport.stream import PAGE as PAGE_CHUNK
from pcteleport.teleport.stream import ByteSource, FileReader, StreamParser

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

PAGE = 4096
GUEST_SCRIPT = """#!/bin/sh
mkdir -p /mnt /anon
mount -t ext4 -o ro /dev/disk/by-id/virtio-data /mnt || exit 1
mount -t tmpfs -o size=16m tmpfs /anon
dd if=/dev/urandom of=/anon/blob bs=1M count=6 2>/dev/null
echo "CHECKSUM $(cat /mnt/files/* | sha256sum | cut -d' ' -f1)"
echo "ANON $(sha256sum /anon/blob | cut -d' ' -f1)"
"""


def oracle_map(stream: Path, disk: Path) -> RestorableMap:
    """Test stand-in for the guest module: every RAM page whose bytes equal a disk block.

    The encoder re-checks each page against the disk anyway, so a map from any source is
    safe; this one lets the codec be tested on a real stream independently of the guest.
    """
    blocks: dict[bytes, int] = {}
    data = disk.read_bytes()
    for off in range(0, len(data), PAGE):
        blocks.setdefault(data[off : off + PAGE], off)
    zero = bytes(PAGE)
    extents = []
    with stream.open("rb") as f:
        parser = StreamParser(ByteSource(FileReader(f)))
        layout = None
        for chunk in parser.chunks():
            if chunk.kind != PAGE_CHUNK or chunk.block != "pc.ram" or chunk.page == zero:
                continue
            if layout is None:
                layout = RamLayout.for_machine(
                    parser.info.machine, parser.info.ram_blocks["pc.ram"]
                )
            off = blocks.get(chunk.page)
            if off is not None:
                extents.append((layout.gpa(chunk.offset), off, PAGE))
    return RestorableMap(extents=extents, meta={"disk": "serial=data (oracle)"})


def test_teleport_migration_of_a_real_guest(tmp_path: Path) -> None:
    from pcteleport import guestimage

    kernel = require_guest_kernel()
    rng = random.Random(99)
    files = {f"files/f{i:02d}.bin": rng.randbytes(4 << 20) for i in range(12)}  # 48 MiB
    expected = hashlib.sha256(b"".join(files[k] for k in sorted(files))).hexdigest()
    source_disk = make_ext4(tmp_path / "source.raw", files, size_mib=64)
    replica = tmp_path / "replica.raw"
    shutil.copyfile(source_disk, replica)
    boot = guestimage.stage1_boot(GUEST_SCRIPT, kernel=kernel)
    snapshot = tmp_path / "snapshot.bin"

    with QemuGuest(boot, tmp_path / "src", memory_mib=256,
                   disks=[Disk(source_disk, serial="data")]) as src:
        assert src.wait_for("CHECKSUM", timeout=120).split()[-1] == expected
        anon = src.wait_for("ANON").split()[-1]
        # A first, plain migration to a file gives the oracle map; then the guest goes on.
        src.migrate(f"exec:cat > {snapshot}")
        src.qmp("cont")
        rmap = oracle_map(snapshot, source_disk)
        assert rmap.pages >= len(files) * 1024 * 0.9  # the files are in the page cache
        map_file = tmp_path / "map.txt"
        map_file.write_text(rmap.to_text())

        qemu_port, link_port, wan_port, relay_port = (free_port() for _ in range(4))
        secret = tmp_path / "secret"
        secret.write_text(os.urandom(16).hex())
        with QemuGuest(boot, tmp_path / "dst", memory_mib=256,
                       disks=[Disk(replica, serial="data")],
                       incoming=f"tcp:127.0.0.1:{qemu_port}") as dst:
            recv = Relay("recv", "--listen", f"127.0.0.1:{wan_port}",
                         "--to", f"127.0.0.1:{qemu_port}", "--disk", str(replica),
                         "--secret-file", str(secret))
            recv.wait_event("listening")
            link = ThrottledLink(link_port, ("127.0.0.1", wan_port), rate_bps=200e6)
            link.start()
            send = Relay("send", "--listen", f"127.0.0.1:{relay_port}",
                         "--to", f"127.0.0.1:{link_port}", "--map", str(map_file),
                         "--disk", str(source_disk), "--secret-file", str(secret))
            send.wait_event("listening")
            try:
                info = src.migrate(f"tcp:127.0.0.1:{relay_port}", timeout=240)
                assert info["status"] == "completed"
                assert send.finish(60) == 0, send.stderr()
                assert recv.finish(60) == 0, recv.stderr()
            finally:
                send.kill()
                recv.kill()

            dst.wait_running()
            # The guest runs on: files read back through the page cache, anonymous memory too.
            assert dst.run("cat /mnt/files/* | sha256sum | cut -d' ' -f1").strip() == expected
            assert dst.run("sha256sum /anon/blob | cut -d' ' -f1").strip() == anon

            sent = send.wait_event("summary")
            got = recv.wait_event("summary")
            assert got["pages_teleported"] == sent["pages_teleported"]
            assert sent["pages_teleported"] >= len(files) * 1024 * 0.9
            saved = sent["pages_teleported"] * PAGE
            assert link.forward_bytes == sent["wan_bytes"]
            assert sent["wan_bytes"] < sent["guest_bytes"] - saved * 0.9


def test_codec_stats_and_offline_round_trip_on_a_real_stream(tmp_path: Path) -> None:
    """The offline forms on a real captured stream: encode, decode, byte for byte."""
    from pcteleport import guestimage

    kernel = require_guest_kernel()
    rng = random.Random(7)
    files = {f"files/g{i}.bin": rng.randbytes(2 << 20) for i in range(6)}
    disk = make_ext4(tmp_path / "d.raw", files, size_mib=32)
    boot = guestimage.stage1_boot(GUEST_SCRIPT, kernel=kernel)
    stream = tmp_path / "s.bin"
    with QemuGuest(boot, tmp_path / "g", memory_mib=128, disks=[Disk(disk, serial="data")]) as g:
        g.wait_for("ANON", timeout=120)
        g.migrate(f"exec:cat > {stream}")
    stats = offline.qemu_stream_stats(io.BytesIO(stream.read_bytes()))
    assert stats["machine"].startswith("pc-i440fx")
    assert stats["ram_blocks"]["pc.ram"] == 128 << 20
    assert stats["vm_description_bytes"] > 100  # EOF, then QEMU's JSON VM description
    assert stats["pages"] + stats["zero_pages"] >= (128 << 20) // PAGE

    rmap = oracle_map(stream, disk)
    map_file = tmp_path / "m.txt"
    map_file.write_text(rmap.to_text())
    wire, back = tmp_path / "wire.bin", tmp_path / "back.bin"
    assert offline.encode_file(str(map_file), str(disk), str(stream), str(wire)) == 0
    assert offline.decode_file(str(disk), str(wire), str(back)) == 0
    assert back.read_bytes() == stream.read_bytes()
    wstats = offline.wan_stream_stats(io.BytesIO(wire.read_bytes()))
    assert wstats["complete"] and wstats["references"] >= 6 * 512 * 0.9
    with DiskImage(disk) as d:
        assert d.size == 32 << 20

    # The codec benchmark on the same real stream: numbers, never timed assertions.
    bench = codec_bench.run(stream, disk, map_file, repeat=1)
    assert bench.teleported == wstats["references"]
    assert bench.guest_memory_bytes >= 128 << 20  # all of RAM once, some pages again
    assert bench.wan_bytes <= bench.ideal_bytes < bench.stream_bytes
    assert "teleport WAN / ideal" in codec_bench.report(bench, as_json=False)
