#!/usr/bin/env python3
"""pcteleport guest agent: page-cache composition and the restorable map, from inside a guest.

Standard library only, Python >= 3.9, one file: run it as ``python3 -m guest.agent`` or copy
it into a guest and run ``python3 agent.py``.

Commands:
  composition [--interval S] [--count N]   JSON lines: total, free, anon, page cache ...
  map --disk DISK [--binary] [--source auto|module|fallback] [--mounts M,...]
                                           the restorable map of one disk, in the codec's
                                           extent text form (or its binary form)
  disks                                    the block disks this guest has, as JSON
  check-writes [--dir DIR]                 every write journal's lines checked (exit 1: lost)
  serve (--stdio | --port DEVICE)          JSON-lines requests, like qemu-guest-agent

DISK is a virtio serial ("data" or "serial:data"), a name ("vdb", "/dev/vdb") or "MAJ:MIN".

Sources: the pcteleport kernel module (/proc/pcteleport, exact and fast) or, without it, a
userspace fallback: composition from /proc/meminfo, map from mincore() + MADV_POPULATE_READ
+ /proc/self/pagemap + /proc/kpageflags + FIEMAP over the files under the disk's mounts.
Every answer says which source it used.

Protocol (serve): one JSON object a line each way.
  request   {"id": 1, "method": "composition", "params": {...}}
  response  {"id": 1, "result": {...}}  or  {"id": 1, "error": {"code": C, "message": M}}
  event     {"event": "composition", "data": {...}}   (after "watch", until "unwatch")
Methods: hello, ping, composition, disks, map {disk, format: text|binary, source, mounts},
verify {disk} (cached pages of the disk's files against its blocks), drop_caches,
check-writes {dir, limit_s} (the workloads' write journals against the disks), watch {interval},
unwatch. Binary maps travel base64-encoded in result["binary_b64"].
"""

import argparse
import base64
import bisect
import contextlib
import ctypes
import errno
import hashlib
import json
import mmap
import os
import random
import re
import select
import sqlite3
import stat
import struct
import sys
import time

PAGE = 4096
PROC_DIR = "/proc/pcteleport"
PARAM_DIR = "/sys/module/pcteleport/parameters"
PROC_FILESYSTEMS = "/proc/filesystems"
MAP_MAGIC = b"PCTMAP1\n"
PROTOCOL_VERSION = 1
MAX_WATCH_INTERVAL = 3600.0  # longer would overflow select() (1e300) and serves no one
SEND_TIMEOUT_S = 5.0  # with no byte taken for this long, the host has gone
# Filesystems whose files FIEMAP (FIBMAP on vfat) maps to blocks of their own device: what the
# userspace fallback maps and verify checks. With the module loaded the agent uses the module's
# own list (its read-only parameter "supported", module_fstypes()). The fallback keeps this one
# because it runs precisely when there is no module to ask, and reads FIEMAP itself; the rule is
# the module's, and tests/test_kmodule_rules.py checks in a guest that both lists are equal.
FALLBACK_FSTYPES = ("ext4", "ext3", "ext2", "xfs", "vfat", "msdos")
NOT_ROOT_RESTORABLE = ("not root: %s/stats is root-only, so there is no restorable figure "
                       "(run the agent as root)" % PROC_DIR)


class AgentError(Exception):
    """A failure the host can act on; ``code`` is stable, the message says what to do."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


# --- disks ------------------------------------------------------------------------------


def _read(path, default=""):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def list_disks():
    """Whole block disks: name, dev, serial, size and partitions (with byte offsets)."""
    disks = []
    for name in sorted(os.listdir("/sys/block")):
        base = "/sys/block/" + name
        if name.startswith(("loop", "ram", "zram")) and _read(base + "/size", "0") == "0":
            continue
        parts = []
        for entry in sorted(os.listdir(base)):
            pbase = base + "/" + entry
            if os.path.exists(pbase + "/partition"):
                parts.append({
                    "name": entry,
                    "dev": _read(pbase + "/dev"),
                    "start": int(_read(pbase + "/start", "0")) * 512,
                    "size": int(_read(pbase + "/size", "0")) * 512,
                })
        disks.append({
            "name": name,
            "dev": _read(base + "/dev"),
            "serial": _read(base + "/serial") or _read(base + "/device/serial"),
            "size": int(_read(base + "/size", "0")) * 512,
            "partitions": parts,
        })
    return disks


def find_disk(spec, disks=None):
    disks = list_disks() if disks is None else disks
    want = spec[len("serial:"):] if spec.startswith("serial:") else spec
    name = want[len("/dev/"):] if want.startswith("/dev/") else want
    for d in disks:
        if spec.startswith("serial:"):
            if d["serial"] == want:
                return d
        elif want in (d["serial"], d["dev"]) or name == d["name"]:
            return d
    known = ", ".join(
        "%s (serial %s, %s)" % (d["name"], d["serial"] or "none", d["dev"]) for d in disks
    )
    raise AgentError("unknown-disk",
                     "unknown disk %r; this guest has: %s" % (spec, known or "none"))


def _dev_of(devnum):
    return "%d:%d" % (os.major(devnum), os.minor(devnum))


def _mounts():
    """(device, mount point, fstype) of mounted filesystems, from /proc/self/mounts."""
    out = []
    for line in _read("/proc/self/mounts").splitlines():
        fields = line.split()
        if len(fields) >= 3:
            out.append((fields[0], fields[1].replace("\\040", " "), fields[2]))
    return out


def _disk_mounts(disk):
    """Mounts whose block device is the disk or one of its partitions:
    (mount point, fstype, partition start, MAJ:MIN of the partition)."""
    starts = {disk["dev"]: 0}
    for p in disk["partitions"]:
        starts[p["dev"]] = p["start"]
    found = []
    for source, mnt, fstype in _mounts():
        key = None
        try:  # the mounted device (btrfs reports an anonymous st_dev for its files)
            st = os.stat(source)
            if stat.S_ISBLK(st.st_mode):
                key = _dev_of(st.st_rdev)
        except OSError:
            pass
        if key is None:
            try:
                key = _dev_of(os.stat(mnt).st_dev)
            except OSError:
                continue
        if key in starts:
            found.append((mnt, fstype, starts[key], key))
    return found


# --- composition ------------------------------------------------------------------------


# Only the fields the agent uses (add one here before reading it): parsing all ~55 lines is
# most of a composition snapshot's cost; meminfo() has no other keys.
_MEMINFO_FIELDS = re.compile(
    rb"^(MemTotal|MemFree|Buffers|Cached|Dirty|Writeback|AnonPages|Shmem):\s+(\d+) kB$", re.M)


def meminfo():
    """Bytes of the /proc/meminfo fields composition uses."""
    with open("/proc/meminfo", "rb") as f:
        data = f.read()
    return {k.decode(): int(v) * 1024 for k, v in _MEMINFO_FIELDS.findall(data)}


def module_loaded():
    return os.path.isdir(PROC_DIR)


def _module_counters(text):
    counters, sbs = {}, []
    for line in text.splitlines():
        words = line.lstrip("# ").split()
        if len(words) == 2 and words[1].lstrip("-").isdigit():
            counters[words[0]] = int(words[1])
        elif len(words) >= 8 and words[0] == "sb":
            sbs.append({"fstype": words[1], "bdev": words[2], "dev": words[3],
                        "disk": words[5], "disk_dev": words[6], "start": int(words[8])})
    return counters, sbs


def parse_fstypes(text):
    """("ext4", "xfs", ...) from a comma-separated list, the form of the module's parameters."""
    return tuple(t for t in (w.strip() for w in text.split(",")) if t)


def module_fstypes():
    """The filesystem types the loaded module can map, from its read-only parameter
    "supported"; None without the module, or with a module older than that parameter."""
    text = _read(PARAM_DIR + "/supported", None)
    return None if text is None else parse_fstypes(text)


def fstypes_to_walk(supported, proc_filesystems):
    """The value for the module's fstypes: the supported types the kernel has registered, in
    the module's order (naming one that is not registered makes the kernel load its driver)."""
    registered = {line.split()[-1] for line in proc_filesystems.splitlines() if line.strip()}
    return ",".join(t for t in supported if t in registered)


def _set_module_fstypes():
    supported = module_fstypes()
    if not supported:
        return  # a module without "supported" keeps its default (the ext4 family)
    wanted = fstypes_to_walk(supported, _read(PROC_FILESYSTEMS))
    path = PARAM_DIR + "/fstypes"
    try:
        if _read(path) != wanted:
            with open(path, "w") as f:
                f.write(wanted)
    except OSError:
        pass  # not root: the module keeps its default (ext4 family)


class Composition:
    """Snapshots of memory use. The restorable figure comes from the module's stats walk (no
    block lookups), repeated every ``restorable_every`` seconds or less often when the walk is
    long (a big page cache), so that it costs at most WALK_CPU_SHARE of a CPU; without the
    module, from the last fallback map. ``restorable_age_s`` says how old it is."""

    WALK_CPU_SHARE = 0.002

    def __init__(self, restorable_every=5.0):
        self.restorable_every = restorable_every
        self.restorable = None  # (bytes, time.monotonic() when measured, source)
        self._next_walk = 0.0
        self.warning = None  # why restorable is missing, when the agent can tell

    def note_fallback_map(self, pages):
        """Without the module, the last fallback map's size is the best figure there is."""
        if not module_loaded():
            self.restorable = (pages * PAGE, time.monotonic(), "fallback")

    def _refresh(self, now, loaded):
        r = self.restorable
        if not loaded:
            if r is not None and r[2] == "module":
                self.restorable = None  # the module went away: wait for a fallback map
            return
        if r is not None and r[2] == "module" and now < self._next_walk:
            return
        _set_module_fstypes()
        try:
            with open(PROC_DIR + "/stats") as f:
                text = f.read()
        except PermissionError:  # EACCES comes before any walk: trying again costs nothing
            self.warning = NOT_ROOT_RESTORABLE
            return
        except OSError:
            return  # the module went away meanwhile
        counters, _ = _module_counters(text)
        if "restorable_estimate" in counters:
            self.restorable = (counters["restorable_estimate"] * PAGE, now, "module")
            walk_s = counters.get("walk_ns", 0) / 1e9
            self._next_walk = now + max(self.restorable_every, walk_s / self.WALK_CPU_SHARE)

    def snapshot(self):
        now = time.monotonic()
        m = meminfo()
        loaded = module_loaded()
        self._refresh(now, loaded)
        total, free = m.get("MemTotal", 0), m.get("MemFree", 0)
        shmem = m.get("Shmem", 0)
        page_cache = max(0, m.get("Cached", 0) + m.get("Buffers", 0) - shmem)
        dirty, writeback = m.get("Dirty", 0), m.get("Writeback", 0)
        anon = m.get("AnonPages", 0)
        return {
            "t": round(time.time(), 3),
            "total": total,
            "free": free,
            "anon": anon,
            "shmem": shmem,
            "page_cache": page_cache,
            "clean": max(0, page_cache - dirty - writeback),
            "dirty": dirty,
            "writeback": writeback,
            "kernel_other": max(0, total - free - anon - shmem - page_cache),
            "restorable": self.restorable[0] if self.restorable else None,
            "restorable_age_s": round(now - self.restorable[1], 1) if self.restorable else None,
            "source": "module" if loaded else "fallback",
        }


# --- map: kernel module -----------------------------------------------------------------


def _module_map(disk):
    _set_module_fstypes()
    try:
        with open(PROC_DIR + "/map") as f:
            text = f.read()
    except PermissionError:
        raise AgentError("not-root", "reading %s/map needs root: run the agent as root"
                         % PROC_DIR) from None
    counters, sbs = _module_counters(text)
    extents = []
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        pfn, pages, dev, off = line.split()
        if dev == disk["dev"]:
            extents.append((int(pfn, 16) * PAGE, int(off, 16), int(pages) * PAGE))
    notes = []
    if "truncated" in text:
        notes.append("module map truncated (max_extents): the map is partial")
    covered = {sb["dev"] for sb in sbs}
    for mnt, fstype, _start, dev in _disk_mounts(disk):
        if dev not in covered:
            notes.append("%s (%s) is not covered by the module" % (mnt, fstype))
    return extents, counters, notes


# --- map: userspace fallback ------------------------------------------------------------

FS_IOC_FIEMAP = 0xC020660B
_FIEMAP_HEAD = struct.Struct("=QQIIII")
_FIEMAP_EXTENT = struct.Struct("=QQQQQIIII")
# Extents whose bytes on disk are not the file's bytes (or not yet on disk at all).
_FIEMAP_UNUSABLE = (0x2 | 0x4 | 0x8 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800)
_KPF_UPTODATE, _KPF_DIRTY, _KPF_WRITEBACK = 1 << 3, 1 << 4, 1 << 8
_KPF_HEAD, _KPF_TAIL = 1 << 15, 1 << 16
_PM_PRESENT, _PM_PFN_MASK = 1 << 63, (1 << 55) - 1
MADV_POPULATE_READ = 22


FIBMAP, FIGETBSZ = 1, 2


def _block_map(fd, size, fstype):
    """[(logical, physical, length)] of the file's usable extents: FIEMAP, or FIBMAP block by
    block where FIEMAP is missing (vfat). Never FIBMAP on ext4: its bmap writes back a file
    with dirty delalloc pages."""
    try:
        return _fiemap(fd, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOTTY) or fstype.startswith("ext"):
            raise
    import fcntl

    bsize = struct.unpack("i", fcntl.ioctl(fd, FIGETBSZ, struct.pack("i", 0)))[0]
    extents = []
    for block in range((size + bsize - 1) // bsize):
        physical = struct.unpack("i", fcntl.ioctl(fd, FIBMAP, struct.pack("i", block)))[0]
        if physical <= 0:
            continue
        if extents and extents[-1][0] + extents[-1][2] == block * bsize and \
                extents[-1][1] + extents[-1][2] == physical * bsize:
            extents[-1] = (extents[-1][0], extents[-1][1], extents[-1][2] + bsize)
        else:
            extents.append((block * bsize, physical * bsize, bsize))
    return extents


def _fiemap(fd, size):
    """[(logical, physical, length)] of the file's usable extents."""
    import fcntl

    extents, start, count = [], 0, 256
    while start < size:
        buf = bytearray(_FIEMAP_HEAD.size + count * _FIEMAP_EXTENT.size)
        _FIEMAP_HEAD.pack_into(buf, 0, start, size - start, 0, 0, count, 0)
        fcntl.ioctl(fd, FS_IOC_FIEMAP, buf)
        mapped = _FIEMAP_HEAD.unpack_from(buf, 0)[3]
        if not mapped:
            break
        last = False
        for i in range(mapped):
            logical, physical, length, _r1, _r2, flags, _a, _b, _c = _FIEMAP_EXTENT.unpack_from(
                buf, _FIEMAP_HEAD.size + i * _FIEMAP_EXTENT.size)
            if not flags & _FIEMAP_UNUSABLE:
                extents.append((logical, physical, length))
            start = logical + length
            last = bool(flags & 0x1)
        if last:
            break
    return extents


class _Libc:
    def __init__(self):
        self.c = ctypes.CDLL(None, use_errno=True)
        self.c.mmap.restype = ctypes.c_void_p
        self.c.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                                ctypes.c_int, ctypes.c_long]
        self.c.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self.c.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
        self.c.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def _runs(flags):
    """(first, count) runs of true entries."""
    runs, start = [], None
    for i, on in enumerate(flags):
        if on and start is None:
            start = i
        elif not on and start is not None:
            runs.append((start, i - start))
            start = None
    if start is not None:
        runs.append((start, len(flags) - start))
    return runs


def _kpageflags(kpf_fd, pfn):
    return struct.unpack("=Q", os.pread(kpf_fd, 8, pfn * 8))[0]


def _folio_flags(kpf_fd, pfn, prev):
    """Flags of the folio holding ``pfn``: a large folio (xfs has them) keeps dirty, uptodate
    and writeback on its head page only. ``prev`` is (pfn, folio flags) of the page before."""
    flags = _kpageflags(kpf_fd, pfn)
    if not flags & _KPF_TAIL:
        return flags
    if prev is not None and prev[0] == pfn - 1:
        return prev[1]  # same folio as the page just before it
    for back in range(1, 1 << 10):
        head = _kpageflags(kpf_fd, pfn - back)
        if head & _KPF_HEAD:
            return head
    return 0  # no head found: treat as not up to date


def _file_pages(libc, fd, size, pagemap_fd, kpf_fd, counters):
    """{file page index: pfn} of the file's resident pages that are clean and up to date."""
    npages = (size + PAGE - 1) // PAGE
    addr = libc.c.mmap(None, npages * PAGE, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        return {}
    try:
        vec = ctypes.create_string_buffer(npages)
        if libc.c.mincore(addr, npages * PAGE, vec) != 0:
            return {}
        resident = [b & 1 for b in vec.raw[:npages]]
        # Map the resident pages into our page table (no I/O: they are in the page cache).
        for first, count in _runs(resident):
            if libc.c.madvise(addr + first * PAGE, count * PAGE, MADV_POPULATE_READ) != 0:
                for i in range(first, first + count):
                    ctypes.string_at(addr + i * PAGE, 1)
        raw = os.pread(pagemap_fd, 8 * npages, (addr // PAGE) * 8)
        entries = struct.unpack("=%dQ" % (len(raw) // 8), raw)
        pages, prev = {}, None
        for i, entry in enumerate(entries):
            if not resident[i] or not entry & _PM_PRESENT:
                continue
            pfn = entry & _PM_PFN_MASK
            if pfn == 0:
                raise AgentError("not-root", "/proc/self/pagemap hides page frame numbers: "
                                 "the fallback map needs root (CAP_SYS_ADMIN)")
            counters["cached"] += 1
            flags = _folio_flags(kpf_fd, pfn, prev)
            prev = (pfn, flags)
            if flags & _KPF_DIRTY:
                counters["dirty"] += 1
            elif flags & _KPF_WRITEBACK:
                counters["writeback"] += 1
            elif flags & _KPF_UPTODATE:
                pages[i] = pfn
        return pages
    finally:
        libc.c.munmap(addr, npages * PAGE)


def _files_on(mnt):
    """Paths of the regular files under mount point ``mnt``, without entering another
    filesystem mounted below it. One scandir per directory and no stat per name (the entry
    has its type): os.walk with a join and an lstat per name took 0.4 s for a root
    filesystem's 2,000 files in a TCG guest, most of an idle verify. Only regular files: a
    device node or FIFO is never opened."""
    below = {m for _source, m, _fstype in _mounts()
             if m != mnt and m.startswith(mnt.rstrip("/") + "/")}
    stack = [mnt]
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except OSError:
            continue  # gone, or not ours to read
        with entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if entry.path not in below:
                            stack.append(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        yield entry.path
                except OSError:
                    continue


def _fallback_map(disk, mounts=None):
    if os.geteuid() != 0:
        raise AgentError("not-root", "the fallback map reads /proc/kpageflags and page frame "
                         "numbers: run the agent as root")
    on_disk = _disk_mounts(disk)
    if mounts:
        wanted = {os.path.realpath(m) for m in mounts}
        on_disk = [m for m in on_disk if os.path.realpath(m[0]) in wanted]
    notes, covered = [], []
    for mnt, fstype, start, dev in on_disk:
        if fstype in FALLBACK_FSTYPES:
            covered.append((mnt, fstype, start, dev))
        else:
            notes.append("%s (%s) is not covered: the map supports %s" %
                         (mnt, fstype, ", ".join(FALLBACK_FSTYPES)))
    if not covered:
        raise AgentError("unsupported-filesystem" if on_disk else "not-mounted",
                         "no mounted filesystem on %s the map can cover%s" %
                         (disk["name"], (": " + "; ".join(notes)) if notes else ""))
    libc = _Libc()
    counters = {"cached": 0, "dirty": 0, "writeback": 0, "restorable": 0, "files": 0}
    extents = []
    pagemap_fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    kpf_fd = os.open("/proc/kpageflags", os.O_RDONLY)
    seen = set()
    try:
        for mnt, fstype, start, dev in covered:
            for path in _files_on(mnt):
                _fallback_file(path, fstype, dev, start, libc, pagemap_fd, kpf_fd, counters,
                               extents, seen)
    finally:
        os.close(pagemap_fd)
        os.close(kpf_fd)
    return extents, counters, notes


def _fallback_file(path, fstype, dev, start, libc, pagemap_fd, kpf_fd, counters, extents, seen):
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return
    try:
        st = os.fstat(fd)
        if (not stat.S_ISREG(st.st_mode) or st.st_size == 0
                or _dev_of(st.st_dev) != dev or (st.st_dev, st.st_ino) in seen):
            return
        seen.add((st.st_dev, st.st_ino))
        counters["files"] += 1
        pages = _file_pages(libc, fd, st.st_size, pagemap_fd, kpf_fd, counters)
        if not pages:
            return
        for logical, physical, length in _block_map(fd, st.st_size, fstype):
            if logical % PAGE or physical % PAGE:
                continue
            for i in range(logical // PAGE, (logical + length + PAGE - 1) // PAGE):
                pfn = pages.get(i)
                if pfn is not None:
                    extents.append((pfn * PAGE, start + physical + i * PAGE - logical, PAGE))
                    counters["restorable"] += 1
    except OSError:
        return
    finally:
        os.close(fd)


# --- verify: the page cache against the disk -----------------------------------------------


def _resident_pages(libc, fd, size):
    """Indexes of the file's pages that are in the page cache (mincore), without reading."""
    npages = (size + PAGE - 1) // PAGE
    if not npages:
        return []
    addr = libc.c.mmap(None, npages * PAGE, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        return []
    try:
        vec = ctypes.create_string_buffer(npages)
        if libc.c.mincore(addr, npages * PAGE, vec) != 0:
            return []
        return [i for i, b in enumerate(vec.raw[:npages]) if b & 1]
    finally:
        libc.c.munmap(addr, npages * PAGE)


# A migration waits for the map before it starts: the map goes ahead of the guest's own work
# (under a web workload on 1 vCPU it took 0.9-3.3 s at nice 0, 0.3 s in an idle guest). The
# checks after the switch-over share the CPU with the guest's work as equals: the migration is
# not finished until they answer, and the guest runs on meanwhile. At nice 5 they got ~5 % of
# a vCPU beside bench's web-small workload: verify took 12-17 s for its 0.9 s of work, 4-5 s
# at nice 0, 1.2 s at -10 (which would take that much from the workload just after resuming).
NICE_FOR = {"map": -10, "verify": 0, "check-writes": 0}


@contextlib.contextmanager
def at_nice(value):
    """Run the block at nice VALUE (on Linux the nice value is per thread), then restore;
    None: as it is."""
    if value is None:
        yield
        return
    try:
        before = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, 0, value)
    except OSError:  # not root, or no such call: run at the current priority
        before = None
    try:
        yield
    finally:
        if before is not None:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, 0, before)


def verify_cache(disk_spec, limit=20, sample=0):
    """Compare cached pages of the files on a disk with the disk's own blocks.

    The file is read through the page cache; the disk with O_DIRECT (past the cache). After a
    teleport migration a page restored wrongly would differ here. Pages of files being written
    differ until written back: a range that differs is written back (fsync) and read again,
    and only one that still differs while its cached bytes hold still is a mismatch. With
    SAMPLE > 0, files are drawn at random and their cached pages checked until SAMPLE pages
    were (a file's pages together, or a random run of them in a file that has more: few, long
    reads, so the check costs a guest little right after a migration); otherwise every cached
    page of every file is checked.
    """
    disk = find_disk(disk_spec)
    covered = [m for m in _disk_mounts(disk) if m[1] in FALLBACK_FSTYPES]
    if not covered:
        raise AgentError("not-mounted", "no mounted filesystem on %s to verify" % disk["name"])
    libc = _Libc()
    t0 = time.monotonic()
    try:  # first: without root, say so before listing every file
        dev_fd = os.open("/dev/" + disk["name"], os.O_RDONLY | getattr(os, "O_DIRECT", 0))
    except PermissionError:
        raise AgentError("not-root", "verify reads /dev/%s past the page cache: run the agent "
                         "as root" % disk["name"]) from None
    buf = mmap.mmap(-1, 256 * PAGE)  # page aligned, as O_DIRECT wants; one read's most
    mismatches, checked, with_cache = [], 0, 0
    try:
        files = [(path, fstype, start) for mnt, fstype, start, _dev in covered
                 for path in _files_on(mnt)]
        if sample:
            random.shuffle(files)
        for path, fstype, start in files:
            if sample and checked >= sample:
                break
            n = _verify_file(path, fstype, start, libc, dev_fd, buf, mismatches, limit,
                             sample - checked if sample else 0)
            checked += n
            with_cache += 1 if n else 0
    finally:
        os.close(dev_fd)
        buf.close()
    return {"disk": disk["name"], "files": with_cache, "files_on_disk": len(files),
            "pages_checked": checked, "sampled": bool(sample), "mismatches": mismatches,
            "elapsed_ms": round((time.monotonic() - t0) * 1000, 1)}


def _verify_file(path, fstype, start, libc, dev_fd, buf, mismatches, limit, at_most=0):
    """Check the file's cached pages against the disk; how many pages were checked. With
    AT_MOST, a big file (a database) gives a random run of that many of its cached pages."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return 0
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not st.st_size:
            return 0
        resident = _resident_pages(libc, fd, st.st_size)
        if not resident:
            return 0
        if at_most and len(resident) > at_most:
            first = random.randrange(len(resident) - at_most + 1)
            resident = resident[first:first + at_most]
        extents = _block_map(fd, st.st_size, fstype)
        for file_off, physical, length in _verify_segments(resident, extents, st.st_size,
                                                           len(buf)):
            got = os.pread(fd, length, file_off)
            aligned = (len(got) + 511) // 512 * 512  # O_DIRECT reads whole sectors
            n = os.preadv(dev_fd, [memoryview(buf)[:aligned]], start + physical)
            on_disk = buf[:min(n, len(got))]
            if got == on_disk:
                continue
            got, on_disk = _settled(fd, dev_fd, buf, file_off, length, start + physical, got)
            if got is None:
                continue  # written back now, or still being written: no evidence either way
            k = 0
            while k < len(got):  # page by page, to name the pages that differ
                nxt = min(len(got), k + PAGE - (file_off + k) % PAGE)
                if got[k:nxt] != on_disk[k:nxt] and len(mismatches) < limit:
                    mismatches.append("%s page %d (disk byte %d)" % (
                        path, (file_off + k) // PAGE, start + physical + k))
                k = nxt
        return len(resident)
    finally:
        os.close(fd)


def _settled(fd, dev_fd, buf, file_off, length, disk_off, got):
    """A range whose cached bytes differ from the disk's: a file being written (a log, a
    database) has pages not yet written back, or changes while we read. Write it back and read
    both again: (cache, disk) bytes that still differ while the cache held still, else
    (None, None)."""
    for _ in range(3):
        with contextlib.suppress(OSError):
            os.fsync(fd)  # its dirty pages to the disk (a read-only fd may ask that)
        now = os.pread(fd, length, file_off)
        aligned = (len(now) + 511) // 512 * 512
        n = os.preadv(dev_fd, [memoryview(buf)[:aligned]], disk_off)
        on_disk = buf[:min(n, len(now))]
        if now == on_disk:
            return None, None
        if now == got:
            return got, on_disk  # held still, written back, and still not the disk's
        got = now  # changed while we looked: being written, look again
    return None, None


def _verify_segments(resident, extents, size, max_bytes):
    """(file offset, physical byte offset, length) pieces covering the resident pages' bytes
    (up to the end of the file), each contiguous in the file and on the disk. A page may span
    two extents (1 KiB-block filesystems), so pages are cut at extent edges."""
    segments = []
    starts = [e[0] for e in extents]
    for i in resident:
        off, end = i * PAGE, min((i + 1) * PAGE, size)
        k = max(0, bisect.bisect_right(starts, off) - 1)
        while off < end and k < len(extents):
            logical, physical, length = extents[k]
            if off < logical:  # a hole: nothing on the disk to compare
                off = min(end, logical)
                continue
            if off >= logical + length:
                k += 1
                continue
            piece = min(end, logical + length) - off
            phys = physical + off - logical
            last = segments[-1] if segments else None
            if last and last[0] + last[2] == off and last[1] + last[2] == phys \
                    and last[2] + piece <= max_bytes:
                segments[-1] = (last[0], last[1], last[2] + piece)
            else:
                segments.append((off, phys, piece))
            off += piece
    return segments


MADV_POPULATE_WRITE = 23
ZERO_RESERVE = 48 << 20  # leave this much free while zeroing, so nothing is pushed out


def drop_caches(zero_free=True):
    """What the paper's straw man does before a migration: write back, drop clean cache.

    Dropped pages keep their old bytes, and QEMU sends every non-zero page, so on its own
    this saves nothing on the wire. With zero_free, the freed memory is then zeroed (an
    anonymous mapping populated for writing, then unmapped) and QEMU sends it as zero pages.
    """
    before = meminfo().get("Cached", 0)
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as exc:
        raise AgentError("not-root", "cannot drop caches (%s): the agent must run as root" %
                         exc.strerror) from None
    zeroed = _zero_free_memory() if zero_free else 0
    return {"cached_before": before, "cached_after": meminfo().get("Cached", 0),
            "zeroed": zeroed}


def _zero_free_memory():
    size = (meminfo().get("MemFree", 0) - ZERO_RESERVE) // PAGE * PAGE
    if size <= 0:
        return 0
    libc = _Libc()
    addr = libc.c.mmap(None, size, mmap.PROT_READ | mmap.PROT_WRITE,
                       mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        return 0
    try:
        # The kernel hands out zeroed pages: populating them for writing zeroes free memory.
        if libc.c.madvise(addr, size, MADV_POPULATE_WRITE) != 0:
            return 0
        return size
    finally:
        libc.c.munmap(addr, size)


# --- map: output ------------------------------------------------------------------------


# --- write journals ------------------------------------------------------------------------
# Workloads journal what they made durable (scenarios/guest/writejournal.py states the format);
# after a migration every line must still hold: a line that does not is a lost write.

JOURNAL_DIR = "/var/lib/pcteleport/journals"
FAILURES_KEPT = 10


def _digest(data):
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _read_direct(fd, offset, length):
    """The bytes on the disk itself, past the page cache: O_DIRECT wants page-aligned offsets,
    lengths and buffers (an anonymous mmap is one)."""
    start = offset - offset % PAGE
    size = -(-(offset + length - start) // PAGE) * PAGE
    buf = mmap.mmap(-1, size)
    try:
        got = os.preadv(fd, [buf], start)
        return bytes(buf[offset - start:max(offset - start, min(got, offset - start + length))])
    finally:
        buf.close()


class WriteChecker:
    """Checks journal lines, keeping files and databases open between lines."""

    def __init__(self):
        self.fds = {}  # path -> (buffered fd, O_DIRECT fd or None)
        self.dbs = {}

    def close(self):
        for fds in self.fds.values():
            for fd in fds:
                if fd is not None:
                    os.close(fd)
        for db in self.dbs.values():
            db.close()

    def _file(self, path):
        if path not in self.fds:
            fd = os.open(path, os.O_RDONLY)
            try:
                direct = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECT", 0))
            except OSError:
                direct = None  # a filesystem without O_DIRECT: the cached view only
            self.fds[path] = (fd, direct)
        return self.fds[path]

    def check(self, entry):
        """None when the line holds, else what is wrong."""
        if "file" in entry:
            path, offset, length = entry["file"], int(entry["offset"]), int(entry["length"])
            fd, direct = self._file(path)
            cached = os.pread(fd, length, offset)
            if len(cached) < length:
                return "%s has %d bytes, the journal has %d at %d" % (
                    path, os.fstat(fd).st_size, length, offset)
            if _digest(cached) != entry["blake2b"]:
                return "%s bytes %d-%d differ from what was written" % (
                    path, offset, offset + length)
            if direct is not None and _digest(_read_direct(direct, offset, length)) != \
                    entry["blake2b"]:
                return "%s bytes %d-%d on the disk differ from what was written (the page " \
                    "cache has them right)" % (path, offset, offset + length)
            return None
        if "sqlite" in entry:
            path, sql = entry["sqlite"], entry["sql"]
            if not sql.lstrip().upper().startswith("SELECT"):
                return "not a SELECT: %r" % sql[:60]
            if path not in self.dbs:
                self.dbs[path] = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=30)
            rows = self.dbs[path].execute(sql, entry.get("args") or []).fetchall()
            got = _digest(json.dumps([list(r) for r in rows], separators=(",", ":")).encode())
            if got != entry["blake2b"]:
                return "%s: %s %s returns %d row(s), not what was committed" % (
                    path, sql.split(" FROM ")[-1].split(" WHERE ")[0], entry.get("args"),
                    len(rows))
            return None
        return "neither a file nor a database line"


def check_writes(directory=JOURNAL_DIR, limit_s=120.0):
    """Every line of every journal in `directory`, checked. A journal's last line without its
    newline is being written: not yet a claim. Stops after `limit_s` and says so."""
    t0 = time.monotonic()
    journals, failures, failed, complete = [], [], 0, True
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(".jsonl"))
    except FileNotFoundError:
        names = []
    checker = WriteChecker()
    try:
        for name in names:
            path = os.path.join(directory, name)
            with open(path, "rb") as f:
                data = f.read()
            lines = data.split(b"\n")[:-1]  # the part after the last newline is unfinished
            checked = bad = 0
            for number, line in enumerate(lines, 1):
                if time.monotonic() - t0 > limit_s:
                    complete = False
                    break
                try:
                    problem = checker.check(json.loads(line))
                except (ValueError, KeyError, TypeError, OSError, sqlite3.Error) as exc:
                    problem = "%s: %s" % (type(exc).__name__, exc)
                checked += 1
                if problem is not None:
                    bad += 1
                    if len(failures) < FAILURES_KEPT:
                        failures.append("%s line %d: %s" % (path, number, problem))
            failed += bad
            journals.append({"path": path, "entries": len(lines), "checked": checked,
                             "failed": bad})
    finally:
        checker.close()
    return {"journals": journals, "entries": sum(j["entries"] for j in journals),
            "checked": sum(j["checked"] for j in journals), "failed": failed,
            "failures": failures, "complete": complete,
            "elapsed_ms": round((time.monotonic() - t0) * 1000, 1)}


def coalesce(extents):
    """Sorted by guest address; neighbours contiguous in memory and on disk become one."""
    out = []
    for gpa, off, length in sorted(extents):
        if out and out[-1][0] + out[-1][2] == gpa and out[-1][1] + out[-1][2] == off:
            out[-1] = (out[-1][0], out[-1][1], out[-1][2] + length)
        else:
            out.append((gpa, off, length))
    return out


def restorable_map(disk_spec, source="auto", mounts=None):
    """(header dict, extents) for one disk; source is auto, module or fallback."""
    disk = find_disk(disk_spec)
    notes = []
    if source == "module" and not module_loaded():
        raise AgentError("module-missing", "the pcteleport kernel module is not loaded "
                         "(insmod pcteleport.ko), or ask for source=fallback")
    t0 = time.monotonic()
    if source == "module" or (source == "auto" and module_loaded()):
        extents, counters, notes = _module_map(disk)
        used = "module"
    else:
        if source == "auto":
            notes.append("pcteleport kernel module not loaded: userspace fallback used")
        extents, counters, fb_notes = _fallback_map(disk, mounts)
        notes += fb_notes
        used = "fallback"
    extents = coalesce(extents)
    header = {
        "disk-serial": disk["serial"] or "-",
        "disk-name": disk["name"],
        "disk-dev": disk["dev"],
        "disk-size": str(disk["size"]),
        "source": used,
        "pages": str(sum(e[2] for e in extents) // PAGE),
        "extents": str(len(extents)),
        "elapsed-ms": "%.1f" % ((time.monotonic() - t0) * 1000),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for key in ("cached", "dirty", "writeback", "in_dirty_file", "unmapped", "via_fiemap",
                "via_bmap", "walk_ns"):
        if key in counters:
            header["guest-" + key.replace("_", "-")] = str(counters[key])
    for i, note in enumerate(notes):
        header["note-%d" % (i + 1)] = note
    return header, extents


def map_text(header, extents):
    lines = ["# pcteleport restorable map: <guest-physical-address> <disk-byte-offset> <length>"]
    lines += ["# %s: %s" % (k, v) for k, v in header.items()]
    lines += ["0x%x 0x%x %d" % e for e in extents]
    return "\n".join(lines) + "\n"


def map_binary(extents):
    out = [MAP_MAGIC, struct.pack("<Q", len(extents))]
    out += [struct.pack("<QQQ", *e) for e in extents]
    return b"".join(out)


# --- serving ----------------------------------------------------------------------------


class Server:
    """JSON-lines requests from the host; composition events while a watch is on."""

    def __init__(self, read_fd, write_fd, reconnecting):
        self.read_fd, self.write_fd = read_fd, write_fd
        self.reconnecting = reconnecting  # virtio port: EOF means "host not connected"
        self.composition = Composition()
        self.watch_interval = None
        self.next_event = 0.0
        self.buf = b""

    def send(self, obj):
        """Write one line; on a virtio port give up once the host took nothing for
        SEND_TIMEOUT_S (writes block while no host is connected) and drop the watch: its reader
        is gone. A big answer (a map of megabytes) may take longer than that in all."""
        data = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
        deadline = time.monotonic() + SEND_TIMEOUT_S
        try:
            while data:
                try:
                    data = data[os.write(self.write_fd, data):]
                    deadline = time.monotonic() + SEND_TIMEOUT_S  # it moved: the host is there
                except BlockingIOError:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        self.watch_interval = None
                        return
                    select.select([], [self.write_fd], [], min(remaining, 0.5))
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.EIO, errno.ENXIO, errno.ENODEV):
                raise
            self.watch_interval = None  # host went away

    def handle(self, line):
        try:
            req = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than the stack
            self.send({"id": None, "error": {"code": "bad-request",
                                             "message": "not a JSON object: %r" % line[:80]}})
            return
        rid = req.get("id") if isinstance(req, dict) else None
        try:
            if not isinstance(req, dict) or not isinstance(req.get("method"), str):
                raise AgentError("bad-request", "a request needs a string 'method'")
            params = req.get("params") or {}
            if not isinstance(params, dict):
                raise AgentError("bad-request", "'params' must be a JSON object")
            with at_nice(NICE_FOR.get(req["method"])):  # the answer's writing included
                self.send({"id": rid, "result": self.dispatch(req["method"], params)})
        except AgentError as exc:
            self.send({"id": rid, "error": {"code": exc.code, "message": exc.message}})
        except Exception as exc:  # keep serving: one bad request must not end the agent
            self.send({"id": rid, "error": {"code": "internal",
                                            "message": "%s: %s" % (type(exc).__name__, exc)}})

    def dispatch(self, method, params):
        if method == "ping":
            return {}
        if method == "hello":
            warnings = []
            loaded = module_loaded()
            fstypes = module_fstypes() if loaded else FALLBACK_FSTYPES
            if not loaded:
                warnings.append("pcteleport kernel module not loaded: using the userspace "
                                "fallback (composition from /proc/meminfo)")
            elif fstypes is None:
                warnings.append("the pcteleport module does not list the filesystems it "
                                "supports (older than this agent): it walks its default ones")
            if os.geteuid() != 0:
                warnings.append("agent is not root: maps and the restorable figure are "
                                "unavailable")
            return {"agent": "pcteleport", "protocol": PROTOCOL_VERSION, "pid": os.getpid(),
                    "source": "module" if loaded else "fallback",
                    "fstypes": list(fstypes) if fstypes is not None else None,
                    "python": sys.version.split()[0], "warnings": warnings}
        if method == "composition":
            return self.composition.snapshot()
        if method == "disks":
            return {"disks": list_disks()}
        if method == "map":
            if "disk" not in params:
                raise AgentError("bad-request", "map needs params.disk (serial, name or MAJ:MIN)")
            header, extents = restorable_map(params["disk"], params.get("source", "auto"),
                                             params.get("mounts"))
            if header["source"] == "fallback":
                self.composition.note_fallback_map(int(header["pages"]))
            result = {"header": header}
            if params.get("format", "text") == "binary":
                result["binary_b64"] = base64.b64encode(map_binary(extents)).decode()
            else:
                result["text"] = map_text(header, extents)
            return result
        if method == "verify":
            if "disk" not in params:
                raise AgentError("bad-request", "verify needs params.disk (serial, name, MAJ:MIN)")
            return verify_cache(params["disk"], sample=max(0, int(params.get("sample", 0))))
        if method == "check-writes":
            try:
                limit_s = float(params.get("limit_s", 120.0))
            except (TypeError, ValueError):
                limit_s = float("nan")
            if not 0 < limit_s <= 3600:  # also NaN and Infinity
                raise AgentError("bad-request", "check-writes limit_s must be 0-3600 seconds")
            directory = params.get("dir", JOURNAL_DIR)
            if not isinstance(directory, str):
                raise AgentError("bad-request", "check-writes dir must be a path")
            return check_writes(directory, limit_s)
        if method == "drop_caches":
            return drop_caches(bool(params.get("zero_free", True)))
        if method == "watch":
            try:
                interval = float(params.get("interval", 1.0))
            except (TypeError, ValueError):
                interval = float("nan")
            if not 0.05 <= interval <= MAX_WATCH_INTERVAL:  # also NaN and Infinity
                raise AgentError("bad-request", "watch interval must be a number of seconds "
                                 "from 0.05 to %g" % MAX_WATCH_INTERVAL)
            self.watch_interval = interval
            self.next_event = time.monotonic()
            return {"interval": interval}
        if method == "unwatch":
            self.watch_interval = None
            return {}
        raise AgentError("unknown-method", "unknown method %r" % method)

    def serve_forever(self):
        while True:
            timeout = None
            if self.watch_interval is not None:
                timeout = max(0.0, self.next_event - time.monotonic())
            ready, _, _ = select.select([self.read_fd], [], [], timeout)
            if ready:
                try:
                    chunk = os.read(self.read_fd, 65536)
                except BlockingIOError:
                    chunk = None  # spurious wake-up: nothing to read yet
                if chunk == b"":
                    if not self.reconnecting:
                        return
                    self.watch_interval = None
                    self.buf = b""
                    time.sleep(0.1)  # the host is not connected to the port
                    continue
                self.buf += chunk or b""
                while b"\n" in self.buf:
                    line, self.buf = self.buf.split(b"\n", 1)
                    if line.strip():
                        self.handle(line.decode(errors="replace"))
            if self.watch_interval is not None and time.monotonic() >= self.next_event:
                self.send({"event": "composition", "data": self.composition.snapshot()})
                self.next_event += self.watch_interval
                if self.next_event < time.monotonic():
                    self.next_event = time.monotonic() + self.watch_interval


# --- command line -----------------------------------------------------------------------


def main(argv=None):
    parser = argparse.ArgumentParser(prog="pcteleport-agent", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    comp = sub.add_parser("composition", help="JSON lines of memory composition")
    comp.add_argument("--interval", type=float, default=1.0)
    comp.add_argument("--count", type=int, default=0, help="stop after N (0: forever)")
    mp = sub.add_parser("map", help="the restorable map of one disk")
    mp.add_argument("--disk", required=True)
    mp.add_argument("--binary", action="store_true", help="the compact binary form")
    mp.add_argument("--source", choices=("auto", "module", "fallback"), default="auto")
    mp.add_argument("--mounts", help="fallback: only these mount points (comma-separated)")
    mp.add_argument("--output", "-o", help="write here instead of stdout")
    sub.add_parser("disks", help="the guest's block disks as JSON")
    cw = sub.add_parser("check-writes", help="check the workloads' write journals (JSON)")
    cw.add_argument("--dir", default=JOURNAL_DIR)
    srv = sub.add_parser("serve", help="answer JSON-lines requests")
    where = srv.add_mutually_exclusive_group(required=True)
    where.add_argument("--stdio", action="store_true")
    where.add_argument("--port", help="a virtio-serial port, e.g. /dev/virtio-ports/NAME")
    args = parser.parse_args(argv)

    try:
        if args.cmd == "composition":
            comp_state = Composition()
            n, warned = 0, None
            while True:
                print(json.dumps(comp_state.snapshot()), flush=True)
                if comp_state.warning != warned:  # once, not once a line
                    warned = comp_state.warning
                    print("pcteleport-agent: %s" % warned, file=sys.stderr)
                n += 1
                if args.count and n >= args.count:
                    return 0
                time.sleep(args.interval)
        if args.cmd == "disks":
            print(json.dumps(list_disks(), indent=1))
            return 0
        if args.cmd == "check-writes":
            result = check_writes(args.dir)
            print(json.dumps(result, indent=1))
            return 1 if result["failed"] else 0
        if args.cmd == "map":
            mounts = args.mounts.split(",") if args.mounts else None
            header, extents = restorable_map(args.disk, args.source, mounts)
            for key, note in header.items():
                if key.startswith("note-"):
                    print("pcteleport-agent: %s" % note, file=sys.stderr)
            data = map_binary(extents) if args.binary else map_text(header, extents).encode()
            if args.output:
                with open(args.output, "wb") as f:
                    f.write(data)
            else:
                sys.stdout.buffer.write(data)
                sys.stdout.flush()
            return 0
        if args.cmd == "serve":
            if args.stdio:
                Server(sys.stdin.fileno(), sys.stdout.fileno(), reconnecting=False).serve_forever()
            else:
                fd = os.open(args.port, os.O_RDWR | os.O_NONBLOCK)
                Server(fd, fd, reconnecting=True).serve_forever()
            return 0
    except AgentError as exc:
        print("pcteleport-agent: %s: %s" % (exc.code, exc.message), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
