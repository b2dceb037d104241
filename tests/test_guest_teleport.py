"""The guest side feeding the codec, end to end on real things: the kernel module's map (via
the agent over virtio-serial) of a Debian guest that read its files, QEMU's own migration
stream, `pcteleport codec encode/decode` with the disk image, and the guest resumed from the
decoded stream at a second QEMU with its files' checksum unchanged."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
from qemu_guest import Disk, QemuGuest, debian_guest_boot, make_ext4

from pcteleport.sites.agent_client import AgentClient

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

PCTELEPORT = [sys.executable, "-m", "pcteleport.cli"]


def _codec(*args: str) -> dict:
    out = subprocess.run([*PCTELEPORT, "codec", *args], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize("memory_mib", [384, 4608], ids=["below-4g", "above-4g"])
def test_module_map_teleports_the_page_cache(tmp_path: Path, memory_mib: int) -> None:
    """With 4.5 GiB the page cache lands above 4 GiB (past the PCI hole): guest physical
    addresses from the module must still name the right RAM pages for the codec."""

    boot = debian_guest_boot()
    rng = random.Random(7)
    files = {f"files/t{i:02d}.bin": rng.randbytes(rng.randrange(1 << 20, 3 << 20))
             for i in range(12)}
    expected = hashlib.sha256(b"".join(files[k] for k in sorted(files))).hexdigest()
    data = make_ext4(tmp_path / "data.raw", files, size_mib=48)
    disks = [Disk(data, "data", readonly=True)]
    stream, wan, decoded = tmp_path / "qemu.bin", tmp_path / "wan.bin", tmp_path / "dec.bin"
    map_path = tmp_path / "data.map"

    src = QemuGuest(boot, tmp_path / "src", memory_mib=memory_mib, disks=disks, agent=True)
    with src:
        src.wait_for("PCTELEPORT-READY", timeout=90)
        src.run("mkdir /mnt/data && mount -o ro /dev/disk/by-id/virtio-data /mnt/data && "
                "cat /mnt/data/files/* > /dev/null")
        with AgentClient.connect_unix(src.agent_socket) as agent:
            rmap = agent.map("data")
        rmap.save(map_path)
        if memory_mib > 4096:
            gpas = [int(line.split()[0], 0) for line in (rmap.text or "").splitlines()
                    if line and not line.startswith("#")]
            assert max(gpas) >= 1 << 32  # the case this run is for
        src.migrate(f"exec:cat > {stream}", timeout=300)

    map_pages = int(rmap.header["pages"])
    file_pages = sum((len(d) + 4095) // 4096 for d in files.values())
    assert map_pages == file_pages
    encoded = _codec("encode", "--map", str(map_path), "--disk", str(data), str(stream),
                     str(wan))["encoded"]
    # Every page the module listed reached the encoder with its disk block's bytes.
    assert encoded["pages_teleported"] == map_pages, encoded
    assert wan.stat().st_size < stream.stat().st_size - (map_pages * 4096) * 0.9
    _codec("decode", "--disk", str(data), str(wan), str(decoded))
    assert decoded.read_bytes() == stream.read_bytes()

    with src.destination(tmp_path / "dst", f"exec:cat {decoded}") as dst:
        dst.wait_running()
        assert dst.run("cat /mnt/data/files/* | sha256sum").split()[0] == expected
    print(f"\nFIGURES teleport ({memory_mib} MiB): {map_pages} pages mapped and teleported; "
          f"QEMU stream "
          f"{stream.stat().st_size} B -> WAN {wan.stat().st_size} B")
