"""The source side: QEMU's stream in, WAN frames out, restorable pages as references.

A PAGE record of the main RAM block whose page the map says mirrors a disk block, and
whose bytes are exactly that block's bytes in the source's image, becomes a reference
(disk offset + xxh3-128 of the page). Everything else is carried losslessly in zstd-
compressed DATA frames, so the decoder can rebuild the stream byte for byte.

DATA payload (before compression): be32 n | n x (be32 literal position, be64 disk offset,
16-byte hash) | literal bytes. A reference's page goes in front of the literal byte at its
position. The first payload byte says whether the rest is zstd-compressed.
"""

from __future__ import annotations

import struct
import threading
from collections import OrderedDict
from collections.abc import Callable

import xxhash
import zstandard

from pcteleport.teleport import wan
from pcteleport.teleport.counters import CodecCounters
from pcteleport.teleport.disk import DISK_BITS, DiskImage, DiskSet
from pcteleport.teleport.layout import RamLayout
from pcteleport.teleport.mapfile import RestorableMap
from pcteleport.teleport.stream import PAGE, RUN, ZERO, ByteSource, Chunk, Reader, StreamParser

REF = struct.Struct(">IQ16s")
COUNT = struct.Struct(">I")
PLAIN, ZSTD = 0, 1
_KIND = {PLAIN: bytes([PLAIN]), ZSTD: bytes([ZSTD])}  # the payload's first byte
FRAME_BYTES = 512 << 10  # flush a DATA frame at this much literal data
KEEP_BYTES = 64 << 20  # teleported pages kept to answer the decoder's FETCH requests

page_hash = xxhash.xxh3_128_digest


class Encoder:
    def __init__(
        self,
        writer: wan.FrameWriter,
        rmap: RestorableMap | None = None,
        disk: DiskImage | DiskSet | None = None,
        *,
        ram_block: str = "pc.ram",
        level: int = 1,
        max_ram_below_4g: int | None = None,
        keep_bytes: int = KEEP_BYTES,
    ) -> None:
        if rmap is not None and rmap.extents and disk is None:
            raise ValueError("a restorable map needs the disk image it refers to")
        self.writer = writer
        self.rmap = rmap
        self.disk = disk
        self.ram_block = ram_block
        self.max_ram_below_4g = max_ram_below_4g
        self.counters = CodecCounters()
        self._zstd = zstandard.ZstdCompressor(level=level)
        self._table: dict[int, int] | None = None
        self._lits: list[bytes | memoryview] = []
        self._litlen = 0
        self._refs: list[bytes] = []
        self._next_ref = 0
        self._kept: OrderedDict[int, bytes] = OrderedDict()
        self._keep_pages = keep_bytes // 4096
        self._kept_lock = threading.Lock()
        self._hash = xxhash.xxh3_128()
        self.parser: StreamParser | None = None
        # Map refreshes arrive from another thread; the table is only changed in this one.
        self._pending: list[RestorableMap] = []
        self._pending_lock = threading.Lock()
        self._later: set[int] = set()  # RAM offsets only a refresh named
        # per disk of a DiskSet (index): pages teleported, and pages the map named whose bytes
        # are no longer the disk's (written since: an overlay holds them now)
        self.teleported_by_disk: dict[int, int] = {}
        self.refused_by_disk: dict[int, int] = {}

    # -- the stream ---------------------------------------------------------------------

    def hello(self, **extra: object) -> None:
        info = {
            "role": "encoder",
            "hash": "xxh3-128",
            "page_size": 4096,
            "disk_size": self.disk.size if self.disk else None,
            "disk_sizes": self.disk.sizes if self.disk else None,
            "map_pages": self.rmap.pages if self.rmap else 0,
            "disk": (self.rmap.meta.get("disk") if self.rmap else None),
        }
        info.update(extra)
        self.writer.send_json(wan.HELLO, info)

    def run(self, reader: Reader) -> CodecCounters:
        """Encode a whole QEMU stream from `reader`, then send END."""
        source = ByteSource(reader, on_wait=self.flush, on_data=self._hash.update)
        self.parser = parser = StreamParser(source, runs=True)
        counters = self.counters
        lits = self._lits
        for chunk in parser.chunks():
            kind = chunk.kind
            if kind == RUN:
                self._run(chunk)
            elif kind == PAGE:
                lits.append(chunk.raw)
                self._litlen += len(chunk.raw)
                if not self._teleport(chunk.block, chunk.offset, chunk.page):
                    lits.append(chunk.page)
                    self._litlen += 4096
                    counters.pages_sent += 1
            else:
                lits.append(chunk.raw)
                self._litlen += len(chunk.raw)
                if kind == ZERO:
                    counters.pages_zero += 1
            if self._litlen >= FRAME_BYTES:
                self.flush()
        counters.guest_bytes = source.offset
        self.flush()
        self.writer.send_json(
            wan.END,
            {
                "stream_bytes": source.offset,
                "stream_hash": self._hash.hexdigest(),
                "optional_tail": parser.info.optional_tail(),
                "counters": counters.as_dict(),
            },
        )
        counters.wan_bytes = self.writer.bytes_out
        counters.frames = self.writer.seq
        return counters

    def _run(self, chunk: Chunk) -> None:
        """A RUN of records: carried as one literal, cut around the pages teleported."""
        raw = chunk.raw
        counters = self.counters
        counters.pages_zero += chunk.zero
        table = self._page_table(chunk.block) if chunk.pages else None
        prev = 0
        sent = len(chunk.pages)
        if table:  # else no page of this run can be teleported: no per-page work at all
            get = table.get
            lits = self._lits
            buf, at = raw.obj, chunk.at
            for pos, offset in chunk.pages:
                if get(offset) is None:
                    continue
                lits.append(raw[prev:pos])
                self._litlen += pos - prev
                prev = pos
                page = buf[at + pos : at + pos + 4096]
                if self._teleport(chunk.block, offset, page):
                    prev = pos + 4096
                    sent -= 1
        self._lits.append(raw[prev:])
        self._litlen += len(raw) - prev
        counters.pages_sent += sent

    def add_map(self, rmap: RestorableMap) -> None:
        """Pages cached since the map was taken (a refresh): teleported from now on. Any
        thread; the encoder merges it before its next page."""
        if rmap.extents and self.disk is None:
            raise ValueError("a restorable map needs the disk image it refers to")
        with self._pending_lock:
            self._pending.append(rmap)

    def _merge_pending(self, table: dict[int, int]) -> None:
        assert self.parser is not None
        with self._pending_lock:
            pending, self._pending = self._pending, []
        info = self.parser.info
        size = info.ram_blocks.get(self.ram_block)
        if size is None:
            return
        layout = RamLayout.for_machine(info.machine, size, self.max_ram_below_4g)
        for rmap in pending:
            for off, disk_off in rmap.page_table(layout).items():
                if off not in table:
                    self._later.add(off)
                table[off] = disk_off

    def _page_table(self, block: str) -> dict[int, int] | None:
        """RAM offset -> disk offset for `block`, with refreshes merged; None if no page of
        it can be teleported."""
        if block != self.ram_block:
            return None
        table = self._table
        if table is None:
            if self.rmap is None and not self._pending:
                return None
            table = self._table = self._build_table()
        if self._pending:
            self._merge_pending(table)
        return table

    def _teleport(self, block: str, offset: int, page: bytes) -> bool:
        """Send the page at `offset` as a reference if the map names it and the disk holds its
        bytes; the literal bytes before it are already held. False: the caller sends it."""
        table = self._page_table(block)
        disk_off = table.get(offset) if table else None
        if disk_off is None:
            return False
        assert self.disk is not None
        index = disk_off >> DISK_BITS
        if self.disk.block(disk_off) != page:
            # A stale or lying map, or a block rewritten since: send the page itself.
            self.counters.pages_refused += 1
            self.refused_by_disk[index] = self.refused_by_disk.get(index, 0) + 1
            return False
        self.teleported_by_disk[index] = self.teleported_by_disk.get(index, 0) + 1
        self._refs.append(REF.pack(self._litlen, disk_off, page_hash(page)))
        ref_id = self._next_ref
        self._next_ref = ref_id + 1
        if self._keep_pages:
            with self._kept_lock:
                self._kept[ref_id] = page
                if len(self._kept) > self._keep_pages:
                    self._kept.popitem(last=False)
        self.counters.pages_teleported += 1
        if self._later and offset in self._later:
            self.counters.pages_teleported_later += 1
        return True

    def _build_table(self) -> dict[int, int]:
        assert self.parser is not None
        if self.rmap is None:
            return {}
        info = self.parser.info
        size = info.ram_blocks.get(self.ram_block)
        if size is None:
            return {}
        layout = RamLayout.for_machine(info.machine, size, self.max_ram_below_4g)
        return self.rmap.page_table(layout)

    def flush(self) -> None:
        """Send what is held as one DATA frame (nothing if nothing is held)."""
        if not self._lits and not self._refs:
            return
        plain = b"".join([COUNT.pack(len(self._refs)), *self._refs, *self._lits])
        packed = self._zstd.compress(plain)
        self._lits.clear()
        self._refs.clear()
        self._litlen = 0
        if len(packed) < len(plain):
            self.writer.send(wan.DATA, _KIND[ZSTD], packed)
        else:
            self.writer.send(wan.DATA, _KIND[PLAIN], plain)
        self.counters.wan_bytes = self.writer.bytes_out

    # -- the back channel ---------------------------------------------------------------

    def stop_keeping(self) -> None:
        """Keep no pages for FETCH (the decoder said it will not ask)."""
        with self._kept_lock:
            self._keep_pages = 0
            self._kept.clear()

    def kept_page(self, ref_id: int) -> bytes | None:
        """The page behind reference `ref_id`, if still kept (for a FETCH)."""
        with self._kept_lock:
            return self._kept.get(ref_id)


def encode_all(
    reader: Reader,
    write: Callable[[bytes], object],
    rmap: RestorableMap | None,
    disk: DiskImage | None,
    secret: bytes | None = None,
    level: int = 1,
) -> CodecCounters:
    """Encode a whole stream to `write` (offline use: files, tests, benchmarks). No page is
    kept for FETCH: offline there is no back channel to ask for one (so `bench codec` measures
    what a relay does by default, whose peer fails on a mismatch and asks for none)."""
    writer = wan.FrameWriter(write, secret)
    enc = Encoder(writer, rmap, disk, level=level, keep_bytes=0)
    enc.hello()
    return enc.run(reader)
