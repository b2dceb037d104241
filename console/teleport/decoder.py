"""The destination side: WAN frames in, QEMU's own stream out, byte for byte.

Each reference is resolved from the local replica and its hash checked before the page is
used. A block that does not verify (a diverged replica) is never passed on: the page is
asked for over the back channel when there is one, and otherwise decoding stops with an
error before QEMU has seen the end of the stream, so the destination can never resume
with a wrong page.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable

import xxhash
import zstandard

from pcteleport.errors import PcteleportError
from pcteleport.teleport import wan
from pcteleport.teleport.counters import CodecCounters
from pcteleport.teleport.disk import DiskImage, DiskSet
from pcteleport.teleport.encoder import COUNT, PLAIN, REF, ZSTD, page_hash

MAX_PLAIN = 256 << 20  # no honest DATA frame decompresses to more than this

# fetch(ids) -> {id: page}: asks the source for pages the replica could not give.
Fetcher = Callable[[list[int]], dict[int, bytes]]


class DecodeError(PcteleportError):
    pass


class ReplicaMismatch(DecodeError):
    pass


class Decoder:
    def __init__(self, disk: DiskImage | DiskSet | None, fetch: Fetcher | None = None) -> None:
        self.disk = disk
        self.fetch = fetch
        self.counters = CodecCounters()
        self.hello: dict | None = None
        self.ended = False
        self._next_ref = 0
        self._hash = xxhash.xxh3_128()
        self._zstd = zstandard.ZstdDecompressor()

    def on_hello(self, info: dict) -> None:
        self._open_for("HELLO")
        if self.hello is not None:
            raise DecodeError("a second HELLO frame: one stream, one sender")
        if info.get("role") != "encoder" or info.get("hash") != "xxh3-128":
            raise DecodeError("the sender is not a pcteleport encoder of this version")
        size = info.get("disk_size")
        if info.get("map_pages") and self.disk is None:
            raise DecodeError(
                "the source teleports pages but this relay has no replica: give --disk"
            )
        sizes = info.get("disk_sizes")
        if info.get("map_pages") and self.disk is not None and (
                size != self.disk.size or (isinstance(sizes, list) and sizes != self.disk.sizes)):
            theirs = sizes if isinstance(sizes, list) and len(sizes) > 1 else size
            mine = self.disk.sizes if len(self.disk.sizes) > 1 else self.disk.size
            raise DecodeError(
                f"replica {self.disk.path} is {mine} bytes but the source image is "
                f"{theirs}: re-sync the replica or migrate without teleport"
            )
        self.hello = info

    def _open_for(self, what: str) -> None:
        if self.ended:  # the hash and length were checked at END: anything more is not ours
            raise DecodeError(f"a {what} frame after the source's END: the stream was "
                              "extended after it finished; refusing it")

    def data(self, payload: bytes) -> list[bytes | memoryview]:
        """The QEMU stream bytes one DATA frame stands for, as pieces in order."""
        self._open_for("DATA")
        if self.hello is None:
            raise DecodeError("data arrived before the sender said hello")
        if not payload:
            raise DecodeError("empty data frame")
        kind, body = payload[0], memoryview(payload)[1:]  # a view: no copy of the frame
        if kind == ZSTD:
            try:
                plain = self._zstd.decompress(body, max_output_size=MAX_PLAIN)
            except zstandard.ZstdError as exc:
                raise DecodeError(f"a data frame does not decompress: {exc}") from None
        elif kind == PLAIN:
            plain = body
        else:
            raise DecodeError(f"unknown data frame encoding {kind}")
        if len(plain) < COUNT.size:
            raise DecodeError("data frame too short")
        (n,) = COUNT.unpack_from(plain)
        lit_start = COUNT.size + n * REF.size
        if lit_start > len(plain):
            raise DecodeError(f"data frame announces {n} references but is too short")
        lits = memoryview(plain)[lit_start:]
        end = len(lits)
        pieces: list[bytes | memoryview] = []
        add = pieces.append
        missing: list[tuple[int, int, bytes, int]] = []  # (piece index, ref id, hash, offset)
        prev = 0
        disk = self.disk
        block_at = disk.block if disk is not None else (lambda _off: None)
        same = hmac.compare_digest
        first_ref = self._next_ref
        for i, (pos, disk_off, digest) in enumerate(REF.iter_unpack(plain[COUNT.size:lit_start])):
            if pos < prev or pos > end:
                raise DecodeError(f"reference {first_ref + i} points outside its frame")
            add(lits[prev:pos])
            prev = pos
            block = block_at(disk_off)
            if block is None:
                size = disk.size if disk is not None else 0
                where, off = disk.locate(disk_off) if disk is not None else ("", disk_off)
                raise DecodeError(
                    f"reference to disk offset {off} is outside the replica {where} "
                    f"({size} bytes): the stream does not belong to this disk"
                )
            if same(page_hash(block), digest):
                add(block)
            else:
                missing.append((len(pieces), first_ref + i, digest, disk_off))
                add(b"")
        add(lits[prev:])
        self._next_ref = first_ref + n
        if missing:
            self._resolve(pieces, missing)
        self.counters.pages_teleported += n - len(missing)
        update = self._hash.update
        size = 0
        for piece in pieces:
            update(piece)
            size += len(piece)
        self.counters.guest_bytes += size
        return pieces

    def _resolve(self, pieces: list, missing: list[tuple[int, int, bytes, int]]) -> None:
        if self.fetch is None:
            where, off = (self.disk.locate(missing[0][3]) if self.disk is not None
                          else ("the replica", missing[0][3]))
            raise ReplicaMismatch(
                f"replica {where} differs from the source at byte {off} (block {off // 4096}"
                f"{f', and {len(missing) - 1} more' if len(missing) > 1 else ''}): "
                "re-sync it or migrate without teleport"
            )
        got = self.fetch([ref for _, ref, _, _ in missing])
        for index, ref, digest, offset in missing:
            page = got.get(ref)
            if page is None or not hmac.compare_digest(page_hash(page), digest):
                where, off = (self.disk.locate(offset) if self.disk is not None
                              else ("the replica", offset))
                raise ReplicaMismatch(
                    f"replica block at byte {off} of {where} differs from the source and the "
                    "source could not supply the page: re-sync the replica"
                )
            pieces[index] = page
        self.counters.pages_fetched += len(missing)

    def end(self, info: dict) -> None:
        """Check the totals the encoder sent against what was produced."""
        self._open_for("second END")
        want_bytes = info.get("stream_bytes")
        if want_bytes != self.counters.guest_bytes:
            raise DecodeError(
                f"stream length mismatch: source sent {want_bytes} bytes, rebuilt "
                f"{self.counters.guest_bytes}"
            )
        if info.get("stream_hash") != self._hash.hexdigest():
            raise DecodeError("rebuilt stream differs from the source's (hash mismatch)")
        src = info.get("counters") or {}
        for key in ("pages_zero", "pages_sent", "pages_refused"):
            if isinstance(src.get(key), int):
                setattr(self.counters, key, src[key])
        self.ended = True


def decode_all(
    frames: Iterable[wan.Frame], disk: DiskImage | None, write: Callable[[bytes], object]
) -> CodecCounters:
    """Decode a whole WAN stream with no back channel (offline use)."""
    dec = Decoder(disk)
    for frame in frames:
        if frame.type == wan.HELLO:
            dec.on_hello(frame.json())
        elif frame.type == wan.DATA:
            for piece in dec.data(frame.payload):
                write(piece)
        elif frame.type == wan.END:
            dec.end(frame.json())
        elif frame.type == wan.ERROR:
            raise DecodeError(f"the source gave up: {frame.payload.decode(errors='replace')}")
        else:
            raise DecodeError(f"unexpected {wan.NAMES.get(frame.type, frame.type)} frame")
        dec.counters.frames += 1
    if not dec.ended:
        raise DecodeError("WAN stream truncated: it ended before the source's END frame")
    return dec.counters


def iter_frames(reader: wan.FrameReader) -> Iterable[wan.Frame]:
    while (frame := reader.next()) is not None:
        yield frame
