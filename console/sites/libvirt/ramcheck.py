"""Guest RAM compared page by page across a migration: the proof that what the destination
loaded is what the source held when it stopped, independent of the codec's own checks.

How: the VM's main RAM lives in a memfd (libvirt `<memoryBacking><source type='memfd'/>`, as
every lab VM has). `pcteleport guest-ram serve` runs on a site host, opens that memfd through
/proc/PID/fd and answers requests for page digests or page bytes on stdin/stdout (JSON lines).

- At the source it is started before the migration and holds the memfd open: once the source
  QEMU has stopped the guest for the switch-over nothing writes that memory again, and the open
  file keeps it readable after libvirt ends the process. Its digest is the RAM at switch-over.
- At the destination it runs while the VM is still paused (VIR_MIGRATE_PAUSED): the RAM exactly
  as the stream left it, before the guest ran a single instruction.

Invariant: a page is reported differing only when both sides' xxh3-64 digests differ; the
bytes of the first differing pages are then fetched from both sides and kept as evidence.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pcteleport.errors import PcteleportError
from pcteleport.records import RamCheck
from pcteleport.teleport.disk import DiskSet, split_offset

PAGE = 4096
DIGEST = 8  # bytes of xxh3-64 per page
CHUNK = 4 << 20
EVIDENCE_PAGES = 16
#: digest bytes per output line: a line must stay well below the SSH channel's receive window
#: (asyncssh: 2 MiB), which only reopens as whole lines are read — a 1 GiB guest's 2 MiB of
#: digests on one line stalled the channel for good
PART = 192 * 1024
QEMU_PID_DIR = Path("/run/libvirt/qemu")


class RamCheckError(PcteleportError):
    pass


# --- the site-host side --------------------------------------------------------------------


def find_memfd(pid: int, proc: Path = Path("/proc")) -> Path:
    """The largest memfd QEMU process `pid` holds: its main RAM backend."""
    best: tuple[int, Path] | None = None
    fd_dir = proc / str(pid) / "fd"
    try:
        entries = list(fd_dir.iterdir())
    except OSError as exc:
        raise RamCheckError(f"cannot list the files of QEMU process {pid}: {exc}") from None
    for entry in entries:
        try:
            if not os.readlink(entry).startswith("/memfd:"):
                continue
            size = entry.stat().st_size
        except OSError:
            continue  # closed meanwhile
        if best is None or size > best[0]:
            best = (size, entry)
    if best is None:
        raise RamCheckError(
            f"QEMU process {pid} keeps no RAM in a memfd: comparing RAM needs the VM's memory "
            "in a memfd (<memoryBacking><source type='memfd'/><access mode='shared'/>)")
    return best[1]


def qemu_pid(vm: str, pid_dir: Path = QEMU_PID_DIR) -> int:
    try:
        return int((pid_dir / f"{vm}.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        raise RamCheckError(f"no running QEMU for VM {vm} on this host "
                            f"({pid_dir / (vm + '.pid')} unreadable)") from None


def digests(fd: int, size: int) -> bytes:
    import xxhash

    out = bytearray()
    for start in range(0, size, CHUNK):
        data = os.pread(fd, min(CHUNK, size - start), start)
        view = memoryview(data)
        for off in range(0, len(data), PAGE):
            out += xxhash.xxh3_64_digest(view[off:off + PAGE])
    return bytes(out)


def serve(vm: str, pid: int | None = None) -> int:
    """`pcteleport guest-ram serve`: open the VM's RAM, say so, then answer requests."""
    pid = pid or qemu_pid(vm)
    path = find_memfd(pid)
    fd = os.open(path, os.O_RDONLY)
    size = os.fstat(fd).st_size

    def say(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    say({"event": "ready", "pid": pid, "bytes": size})
    for line in sys.stdin:
        try:
            req = json.loads(line)
            if req.get("cmd") == "digest":
                t = time.monotonic()
                data = digests(fd, size)
                for start in range(0, len(data), PART):
                    say({"event": "digest-part",
                         "data": base64.b64encode(data[start:start + PART]).decode()})
                say({"event": "digest", "pages": size // PAGE,
                     "elapsed_s": round(time.monotonic() - t, 3)})
            elif req.get("cmd") == "pages":
                index = [int(i) for i in req.get("index", [])][:EVIDENCE_PAGES]
                say({"event": "pages", "data": {
                    str(i): base64.b64encode(os.pread(fd, PAGE, i * PAGE)).decode()
                    for i in index if 0 <= i < size // PAGE}})
            elif req.get("cmd") == "sample":
                say({"event": "sample", **sample(fd, size, req)})
            else:
                say({"event": "error", "message": f"unknown request {req.get('cmd')!r}"})
        except (ValueError, OSError) as exc:
            say({"event": "error", "message": str(exc)})
    os.close(fd)
    return 0


# --- the console side ----------------------------------------------------------------------


@dataclass
class Comparison:
    pages: int
    differing: list[int]  # page indices in the RAM block


def compare(src: bytes, dst: bytes) -> Comparison:
    if len(src) != len(dst) or len(src) % DIGEST:
        raise RamCheckError(f"the two sides' RAM differ in size ({len(src) // DIGEST} and "
                            f"{len(dst) // DIGEST} pages)")
    differing = [i for i in range(0, len(src) // DIGEST)
                 if src[i * DIGEST:(i + 1) * DIGEST] != dst[i * DIGEST:(i + 1) * DIGEST]]
    return Comparison(len(src) // DIGEST, differing)


def compare_across(src: RamProbe, dst: RamProbe, gpa_of: Any,
                   evidence_dir: Path | None) -> RamCheck:
    """Both sides' RAM compared; the first differing pages' bytes kept in `evidence_dir`.
    `gpa_of(offset)` names a page by its guest-physical address."""
    t = time.monotonic()
    result = compare(src.digest(), dst.digest())
    check = RamCheck(result.pages, len(result.differing))
    if result.differing:
        first = result.differing[:EVIDENCE_PAGES]
        check.first = [hex(gpa_of(i * PAGE)) for i in first]
        if evidence_dir is not None:
            check.evidence = keep_evidence(evidence_dir, first, src.pages(first),
                                           dst.pages(first))
    check.elapsed_s = round(time.monotonic() - t, 3)
    return check


def keep_evidence(folder: Path, index: list[int], src: dict[int, bytes],
                  dst: dict[int, bytes]) -> str:
    """The differing pages' bytes from both sides, as page-<index>.src / .dst files."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for i in index:
            for side, pages in (("src", src), ("dst", dst)):
                if i in pages:
                    (folder / f"page-{i:08x}.{side}").write_bytes(pages[i])
    except OSError as exc:
        raise RamCheckError(f"could not keep the differing pages in {folder}: {exc}") from None
    return str(folder)


def sample(fd: int, size: int, req: dict[str, Any]) -> dict[str, Any]:
    """Guest pages at random, for the prediction (pcteleport.predict): of `pages` single
    pages, how many are zero and how many a map names (`exclude`: [first page, pages] or
    [first page, pages, disk offset] ranges, the offset in the relays' address space of
    `disks`, the raw images teleport reads); of those named, how many differ from their block
    there (`named_written`: written since the base, sent whole); on runs of `run` pages, how
    well zstd at QEMU's and the relay's level (1) compresses the non-zero ones, all of them
    and those no map names."""
    import bisect
    import random

    import zstandard

    run = max(1, int(req.get("run", 64)))
    total = size // PAGE
    runs = max(1, min(int(req.get("pages", 8192)) // run, total // run))
    ranges = sorted((int(r[0]), int(r[1]), int(r[2]) if len(r) > 2 else -1)
                    for r in req.get("exclude", []))
    starts = [a for a, _n, _d in ranges]
    paths = list(req.get("disks", []))

    def named_at(page: int) -> int | None:
        """The range's index naming `page`, if one does."""
        i = bisect.bisect_right(starts, page) - 1
        return i if i >= 0 and page < ranges[i][0] + ranges[i][1] else None

    def excluded(page: int) -> bool:
        return named_at(page) is not None

    def written(disks: DiskSet, r: int, page: int, data: bytes) -> bool:
        """The block range `r` names for `page` holds other bytes (or none): sent whole."""
        first, _n, disk = ranges[r]
        if disk < 0 or split_offset(disk)[0] >= len(paths):
            return False  # not asked: counted as restorable, as before
        return disks.block(disk + (page - first) * PAGE) != data

    rng = random.Random(req.get("seed"))
    zc = zstandard.ZstdCompressor(level=1)
    empty = bytes(PAGE)
    # The shares (zero, named, rest) from single pages drawn at random: counted on runs of 64,
    # web's zero share swung 0.47-0.57 between measurements minutes apart while QEMU counted
    # 0.53-0.54 (zero memory comes in long stretches: 256 runs are 256 draws, not 16,384), and
    # T_min with it.
    singles = min(runs * run, total)
    zero = named = named_written = rest = 0
    with DiskSet(paths) as disks:
        for i in rng.sample(range(total), singles):
            page = os.pread(fd, PAGE, i * PAGE)
            r = named_at(i)
            if page == empty:
                zero += 1
            elif r is not None:
                named += 1
                named_written += written(disks, r, i, page)
            else:
                rest += 1
    # zstd on runs: a run's pages compressed together, as multifd packets and relay frames are
    raw_all = packed_all = raw_rest = packed_rest = 0
    for first in rng.sample(range(total // run), runs):
        data = os.pread(fd, run * PAGE, first * run * PAGE)
        every, whole = [], []
        for k in range(run):
            page = data[k * PAGE:(k + 1) * PAGE]
            if page == empty:
                continue
            every.append(page)
            if not excluded(first * run + k):
                whole.append(page)
        if every:
            raw_all += len(every) * PAGE
            packed_all += len(zc.compress(b"".join(every)))
        if whole:
            raw_rest += len(whole) * PAGE
            packed_rest += len(zc.compress(b"".join(whole)))
    return {"pages": singles, "zero": zero, "named": named, "named_written": named_written,
            "rest": rest, "raw": raw_all, "packed": packed_all, "raw_rest": raw_rest,
            "packed_rest": packed_rest}


class RamProbe:
    """One `guest-ram serve` on a site host, spoken to over SSH."""

    def __init__(self, site: Any, vm: str) -> None:  # site: SiteRuntime
        self.site = site
        self.vm = vm
        argv = [*site.config.relay_command, "guest-ram", "serve", "--vm", vm]
        from pcteleport.sites.remote import JsonLines  # here: site hosts need no SSH client

        self._proc = JsonLines(site.host, argv, f"RAM check at {site.name}", RamCheckError)
        try:
            self.ready = self._proc.wait("ready", 30)
        except BaseException:  # (Ctrl-C too) no caller holds it yet to close it
            self._proc.close(wait_s=10)
            raise

    def digest(self) -> bytes:
        self._proc.send(json.dumps({"cmd": "digest"}) + "\n")
        done = self._proc.wait("digest", 120)
        parts = self._proc.take("digest-part")  # they came before the closing line, in order
        data = b"".join(base64.b64decode(ev["data"]) for ev in parts)
        if len(data) != done["pages"] * DIGEST:
            raise RamCheckError(f"RAM check at {self.site.name}: {len(data) // DIGEST} digests "
                                f"for {done['pages']} pages")
        return data

    def pages(self, index: list[int]) -> dict[int, bytes]:
        self._proc.send(json.dumps({"cmd": "pages", "index": index}) + "\n")
        data = self._proc.wait("pages", 60)["data"]
        return {int(k): base64.b64decode(v) for k, v in data.items()}

    def sample(self, pages: int, exclude: list[tuple[int, ...]], run: int = 64,
               seed: int | None = None, disks: list[str] | None = None) -> dict[str, Any]:
        self._proc.send(json.dumps({"cmd": "sample", "pages": pages, "run": run, "seed": seed,
                                    "exclude": exclude, "disks": disks or []}) + "\n")
        return self._proc.wait("sample", 120)

    def close(self) -> None:
        self._proc.close(wait_s=10)
