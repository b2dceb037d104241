"""Captured QEMU migration streams: tests/fixtures/streams/NAME.json + NAME.qemu.zst.

Each fixture is the whole stream of one live migration to a file, zstd-compressed, and a
manifest that says what QEMU said about it: its version, the machine type, the RAM blocks
(HMP `info ramblock`), where pc.ram is split around the PCI hole (HMP `info mtree`), the page
counts of the final `query-migrate`, the stream's size and sha256, and how it was captured.
tests/test_stream_fixtures.py runs every fixture it finds; no QEMU is needed to read them.

Recapture (as root, after scripts/setup.sh: QEMU 10 is the engine it installs; the script
unpacks Debian 12's QEMU 7.2 into /opt/qemu72 if it is not there, as the lab's 7.2 runs were):

    scripts/capture-stream-fixtures                      # every capture in CAPTURES
    scripts/capture-stream-fixtures --qemu /path/to/qemu-system-x86_64 \\
        --machine pc-i440fx-8.2 --machine pc-q35-8.2 \\
        --source-note "where this QEMU came from"        # another QEMU, e.g. 8.2

QEMU 8.2 is in no registry these machines reach: its fixtures were captured from a QEMU 8.2.2
built by hand from source and installed under /opt/qemu82 (each manifest's qemu.source says
what it was built from). CAPTURES takes it where /opt/qemu82 holds one, its note read from
/opt/qemu82/SOURCE; elsewhere its fixtures stay as they were captured.

The guest is tests/fixtures/fixture_guest.c (built here with gcc -m32), booted by QEMU's
multiboot loader after SeaBIOS: a Linux guest would leave ~12 MB of compressed kernel in every
fixture. RAM is the smallest size at which the machine type puts RAM above 4 GiB (the split
is what differs between i440fx and q35); zero pages compress to almost nothing.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXTURE_DIR = HERE / "fixtures" / "streams"
GUEST_SOURCE = HERE / "fixtures" / "fixture_guest.c"
GUEST_LDS = HERE / "fixtures" / "fixture_guest.ld"
READY = "PCTELEPORT-FIXTURE-UP"

QEMU10 = "/usr/bin/qemu-system-x86_64"
QEMU72 = os.path.join(os.environ.get("QEMU72_DIR", "/opt/qemu72"), "qemu-system-x86_64")
#: a QEMU 8.2 built from source by hand (no package of it can be had here), if there is one
QEMU82_DIR = os.environ.get("QEMU82_DIR", "/opt/qemu82")
QEMU82 = os.path.join(QEMU82_DIR, "bin", "qemu-system-x86_64")
#: a file beside a QEMU (its prefix, or the folder of its binary) saying where it came from,
#: recorded as the manifests' qemu.source when --source-note does not say it
SOURCE_FILE = "SOURCE"
#: what `capture` takes with no arguments: (QEMU binary, machine types); 8.2 only where built
CAPTURES = (
    (QEMU10, ("pc-i440fx-10.0", "pc-q35-10.0", "pc-i440fx-7.2", "pc-q35-7.2")),
    (QEMU72, ("pc-i440fx-7.2", "pc-q35-7.2")),
) + (((QEMU82, ("pc-i440fx-8.2", "pc-q35-8.2")),) if os.access(QEMU82, os.X_OK) else ())
#: the smallest RAM (MiB) at which the machine type maps part of pc.ram above 4 GiB
#: (hw/i386/pc_piix.c: from 3.5 GiB, 3 GiB below; pc_q35.c: from 2.75 GiB, 2 GiB below)
RAM_MIB = {"i440fx": 3584, "q35": 2816}
#: devices besides the machine's own and QemuGuest's disk and virtio-serial port: a VGA (its
#: video RAM and option ROM are RAM blocks named by PCI slot) and a NIC, without its option
#: ROM (efi-virtio.rom: 240 KB of compressed bytes in every fixture, and one ROM is enough)
EXTRA_DEVICES = ("-device", "VGA", "-device", "virtio-net-pci,romfile=")
DISK_MIB = 1
URI = "exec:cat > {path}"


def ram_mib_for(machine: str) -> int:
    return RAM_MIB["q35" if "q35" in machine else "i440fx"]


# --- reading fixtures ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Fixture:
    name: str
    manifest: dict
    directory: Path = FIXTURE_DIR

    @property
    def path(self) -> Path:
        return self.directory / self.manifest["stream"]["file"]

    @property
    def qemu_version(self) -> str:
        """major.minor, e.g. '10.0'."""
        return ".".join(self.manifest["qemu"]["version"].split(".")[:2])

    @property
    def machine(self) -> str:
        return self.manifest["machine"]

    def stream(self) -> bytes:
        """The raw stream, checked against the manifest's sha256."""
        data = decompress(self.path.read_bytes())
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.manifest["stream"]["sha256"]:
            raise AssertionError(f"{self.path.name}: sha256 {digest}, the manifest says "
                                 f"{self.manifest['stream']['sha256']}")
        return data


def fixtures(directory: Path = FIXTURE_DIR) -> list[Fixture]:
    """Every fixture whose manifest is in `directory`, by name."""
    return [Fixture(p.stem, json.loads(p.read_text()), directory)
            for p in sorted(directory.glob("*.json"))]


def decompress(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdDecompressor().decompress(data, max_output_size=1 << 30)


def compress(data: bytes) -> bytes:
    """zstd -19 --long=27 (the zstd command, 1.5.4 in Debian 12): ~0.3 MB a fixture, ~1M
    zero-page records included. python-zstandard's 1.5.7 gives 0.3 to 1.2 MB on the same
    streams at any level: its optimal parser stumbles on the records' 9-byte rhythm."""
    return subprocess.run(["zstd", "-q", "-19", "--long=27", "-c"], input=data,
                          capture_output=True, check=True).stdout


# --- capturing ----------------------------------------------------------------------------------


class MultibootGuest:
    """The boot material QemuGuest wants, for the fixture guest (QEMU's -kernel multiboot)."""

    root_image = None

    def __init__(self, kernel: Path) -> None:
        self.kernel = kernel

    def qemu_args(self) -> list[str]:
        return ["-kernel", str(self.kernel)]


def build_guest(workdir: Path) -> Path:
    out = workdir / "fixture_guest.elf"
    subprocess.run(
        ["gcc", "-m32", "-march=i686", "-O2", "-ffreestanding", "-nostdlib", "-static",
         "-fno-pic", "-no-pie", "-fno-stack-protector", "-fno-asynchronous-unwind-tables",
         "-Wall", "-Wextra", "-Werror", "-Wl,--build-id=none", "-Wl,--no-warn-rwx-segments",
         "-T", str(GUEST_LDS), "-o", str(out), str(GUEST_SOURCE)],
        check=True,
    )
    return out


def parse_ramblocks(text: str) -> dict[str, int]:
    """Block name -> used length, from HMP `info ramblock` (QEMU 7.2 to 10.0 print the same
    columns: name, page size, offset, used, total, host address, ro/rw)."""
    blocks = {}
    for line in text.splitlines():
        m = re.match(r"\s*(\S+)\s+\d+\s+\S+\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)",
                     line)
        if m:
            blocks[m.group(1)] = int(m.group(3), 16)
    return blocks


def parse_ram_split(text: str) -> dict[str, dict[str, int]]:
    """Where pc.ram appears in the guest's address space, from HMP `info mtree`: the aliases
    ram-below-4g and ram-above-4g (guest-physical start, pc.ram offset, length)."""
    split = {}
    pattern = (r"([0-9a-f]+)-([0-9a-f]+) \(prio -?\d+, ram\): alias ram-(below|above)-4g "
               r"@pc\.ram ([0-9a-f]+)-([0-9a-f]+)")
    for m in re.finditer(pattern, text):
        gpa, end, which, off = (int(m.group(1), 16), int(m.group(2), 16), m.group(3),
                                int(m.group(4), 16))
        split.setdefault(f"{which}_4g", {"gpa": gpa, "ram_offset": off, "length": end - gpa + 1})
    return split


def source_note(qemu: str) -> str | None:
    """What the SOURCE file beside `qemu` says (in its folder or the one above: an install
    prefix), else None."""
    binary = Path(shutil.which(qemu) or qemu)
    for folder in (binary.parent, binary.parent.parent):
        note = folder / SOURCE_FILE
        if note.is_file():
            return " ".join(note.read_text().split())
    return None


def capture(qemu: str, machine: str, workdir: Path,
            source: str | None = None) -> tuple[bytes, dict]:
    """Boot the fixture guest on `qemu` with `machine`, migrate it live to a file; the stream
    and its manifest (`source`: where this QEMU came from, when its package does not say)."""
    from qemu_guest import Disk, QemuGuest

    workdir.mkdir(parents=True, exist_ok=True)
    kernel = build_guest(workdir)
    disk = workdir / "disk.raw"
    disk.write_bytes(bytes(DISK_MIB << 20))
    raw = workdir / "stream.qemu"
    raw.unlink(missing_ok=True)
    ram_mib = ram_mib_for(machine)
    requested = machine
    boot = MultibootGuest(kernel)
    guest = QemuGuest(boot, workdir / "guest", memory_mib=ram_mib,  # type: ignore[arg-type]
                      disks=[Disk(disk, serial="data")], extra_args=EXTRA_DEVICES,
                      timeout_s=300, machine=machine, qemu=qemu)
    with guest as g:
        g.wait_for(READY, timeout=120)
        time.sleep(0.5)  # the guest rewrites a text page now and then: let it
        version = g.qmp("query-version")
        for m in g.qmp("query-machines"):  # type: ignore[union-attr]
            if machine in (m["name"], m.get("alias")):  # "pc" or "q35": the newest type
                machine = m["name"]
        ramblocks = g.qmp("human-monitor-command", **{"command-line": "info ramblock"})
        mtree = g.qmp("human-monitor-command", **{"command-line": "info mtree"})
        uri = URI.format(path=raw)
        final = g.migrate(uri, timeout=600)
        command_line = g.command_line()
    data = raw.read_bytes()
    qv = version["qemu"]  # type: ignore[index]
    ram = final.get("ram", {})
    manifest = {
        "qemu": {
            "version": f"{qv['major']}.{qv['minor']}.{qv['micro']}",
            "package": version["package"].strip(" ()"),  # type: ignore[index]
            "binary": qemu,
            **({"source": source} if source else {}),
        },
        "machine": machine,
        **({"machine_requested": requested} if requested != machine else {}),
        "ram_mib": ram_mib,
        "ram_blocks": parse_ramblocks(ramblocks),  # type: ignore[arg-type]
        "ram_split": parse_ram_split(mtree),  # type: ignore[arg-type]
        "query_migrate": {k: ram.get(k) for k in ("normal", "duplicate", "transferred",
                                                   "dirty-sync-count")},
        "stream": {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()},
        "captured": {
            "how": ("live migration of the running guest with QMP migrate to "
                    f"'{URI.format(path='FILE')}', default capabilities and parameters"),
            "by": "scripts/capture-stream-fixtures (tests/stream_fixtures.py)",
            "guest": "tests/fixtures/fixture_guest.c (multiboot, TCG)",
            "command_line": [a.replace(str(workdir), "WORKDIR") for a in command_line],
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d"),
        },
    }
    return data, manifest


def fixture_name(version: str, machine: str) -> str:
    return f"qemu-{'.'.join(version.split('.')[:2])}-{machine}"


def store(data: bytes, manifest: dict, directory: Path = FIXTURE_DIR) -> Path:
    name = fixture_name(manifest["qemu"]["version"], manifest["machine"])
    directory.mkdir(parents=True, exist_ok=True)
    packed = compress(data)
    if decompress(packed) != data:
        raise AssertionError("zstd round trip failed")
    manifest = {"name": name, **manifest}
    manifest["stream"]["file"] = f"{name}.qemu.zst"
    (directory / manifest["stream"]["file"]).write_bytes(packed)
    (directory / f"{name}.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return directory / f"{name}.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="capture the stream fixtures of "
                                 "tests/test_stream_fixtures.py")
    ap.add_argument("--qemu", help="a qemu-system-x86_64 (default: every capture in CAPTURES)")
    ap.add_argument("--machine", action="append", default=[],
                    help="machine type (repeat); needed with --qemu")
    ap.add_argument("--out", type=Path, default=FIXTURE_DIR, help="fixture directory")
    ap.add_argument("--source-note", help="where --qemu came from (repository, commit, how "
                    "it was built), recorded as the manifests' qemu.source; default: the "
                    f"{SOURCE_FILE} file beside the binary, if any")
    args = ap.parse_args(argv)
    if args.qemu:
        if not args.machine:
            ap.error("--qemu needs at least one --machine")
        plan = [(args.qemu, tuple(args.machine))]
    else:
        if args.source_note:
            ap.error("--source-note needs --qemu")
        plan = list(CAPTURES)
    sys.path.insert(0, str(HERE))
    for qemu, machines in plan:
        if not shutil.which(qemu):
            print(f"capture: {qemu} is not installed", file=sys.stderr)
            return 1
        source = args.source_note or source_note(qemu)
        for machine in machines:
            with tempfile.TemporaryDirectory(prefix="pct-fixture-") as tmp:
                data, manifest = capture(qemu, machine, Path(tmp), source)
            path = store(data, manifest, args.out)
            size = (args.out / manifest["stream"]["file"]).stat().st_size
            print(f"{path.name}: QEMU {manifest['qemu']['version']} {machine}, "
                  f"{len(data)} bytes, {size} compressed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
