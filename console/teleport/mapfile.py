"""The restorable map: which guest pages mirror which disk blocks.

Text form (for people and tests): one extent per line,
`<guest-physical-address> <disk-byte-offset> <length>`, bytes, decimal or 0x-hex, 4 KiB
aligned; `#` starts a comment. Comment lines of the form `# key: value` before the first
extent are kept as metadata (the guest agent names the disk there).

Binary form (compact, for large maps): the magic b"PCTMAP1\\n", a little-endian u64 count,
then `count` little-endian (u64 gpa, u64 disk offset, u64 length) triples.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pcteleport.errors import PcteleportError
from pcteleport.teleport.layout import RamLayout

PAGE = 4096
BINARY_MAGIC = b"PCTMAP1\n"
_TRIPLE = struct.Struct("<QQQ")


class MapError(PcteleportError):
    pass


@dataclass
class RestorableMap:
    extents: list[tuple[int, int, int]] = field(default_factory=list)  # (gpa, disk, length)
    meta: dict[str, str] = field(default_factory=dict)

    @property
    def pages(self) -> int:
        return sum(length for _, _, length in self.extents) // PAGE

    def page_table(self, layout: RamLayout) -> dict[int, int]:
        """RAM-block offset -> disk offset, one entry per page that lies in guest RAM."""
        table: dict[int, int] = {}
        spans = layout.spans()
        low = layout.below_4g
        for gpa, disk, length in self.extents:
            if gpa + length <= low and length == PAGE:  # one page below the hole: most of them
                table[gpa] = disk
                continue
            # Each extent's part inside each RAM span, a range at a time (a map of the whole
            # page cache is 10^5 pages and more): a crafted 2^62-byte extent is clipped to RAM.
            for lo, hi, shift in spans:
                start, end = max(gpa, lo), min(gpa + length, hi)
                if start < end:
                    table.update(zip(range(start + shift, end + shift, PAGE),
                                     range(disk + start - gpa, disk + end - gpa, PAGE),
                                     strict=True))
        return table

    def to_text(self) -> str:
        lines = [f"# {k}: {v}" for k, v in self.meta.items()]
        lines += [f"0x{g:x} 0x{d:x} {n}" for g, d, n in self.extents]
        return "\n".join(lines) + "\n"

    def to_binary(self) -> bytes:
        out = [BINARY_MAGIC, struct.pack("<Q", len(self.extents))]
        out += [_TRIPLE.pack(*e) for e in self.extents]
        return b"".join(out)


def _number(word: str, lineno: int, what: str) -> int:
    try:
        value = int(word, 0)
    except ValueError:
        raise MapError(f"map line {lineno}: {what} '{word}' is not a number") from None
    if value < 0:
        raise MapError(f"map line {lineno}: {what} {word} is negative")
    if value >= 1 << 64:  # the binary form (and the relays) hold 64-bit numbers
        raise MapError(f"map line {lineno}: {what} {word} does not fit in 64 bits")
    return value


def parse_text(text: str) -> RestorableMap:
    result = RestorableMap()
    for lineno, line in enumerate(text.splitlines(), 1):
        body, _, comment = line.partition("#")
        words = body.split()
        if not words:
            key, sep, value = comment.partition(":")
            if sep and not result.extents and key.strip() and " " not in key.strip():
                result.meta[key.strip()] = value.strip()
            continue
        if len(words) != 3:
            raise MapError(
                f"map line {lineno}: expected '<guest-address> <disk-offset> <length>', "
                f"got {len(words)} fields"
            )
        gpa, disk, length = (
            _number(w, lineno, what)
            for w, what in zip(words, ("guest address", "disk offset", "length"), strict=True)
        )
        for value, what in ((gpa, "guest address"), (disk, "disk offset"), (length, "length")):
            if value % PAGE:
                raise MapError(f"map line {lineno}: {what} 0x{value:x} is not 4 KiB aligned")
        if length == 0:
            raise MapError(f"map line {lineno}: an extent of length 0")
        result.extents.append((gpa, disk, length))
    return result


def parse_binary(data: bytes) -> RestorableMap:
    if not data.startswith(BINARY_MAGIC) or len(data) < len(BINARY_MAGIC) + 8:
        raise MapError("not a binary restorable map (bad magic)")
    (count,) = struct.unpack_from("<Q", data, len(BINARY_MAGIC))
    body = len(BINARY_MAGIC) + 8
    if len(data) != body + count * _TRIPLE.size:
        raise MapError(f"binary map announces {count} extents but its size does not match")
    extents = [_TRIPLE.unpack_from(data, body + i * _TRIPLE.size) for i in range(count)]
    for gpa, disk, length in extents:
        if (gpa | disk | length) % PAGE or not length:
            raise MapError(f"binary map extent 0x{gpa:x} 0x{disk:x} {length} is not aligned")
    return RestorableMap(extents=[tuple(e) for e in extents])


def load(path: str | Path) -> RestorableMap:
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block the read for ever
            raise MapError(f"map {path} is not a regular file")
        data = Path(path).read_bytes()
    except OSError as exc:
        raise MapError(f"cannot read map {path}: {exc.strerror}") from None
    return parse(data, str(path))


def parse(data: bytes, name: str = "map") -> RestorableMap:
    """A map in either form (extent text or binary), told apart by the binary magic."""
    if data.startswith(BINARY_MAGIC):
        return parse_binary(data)
    try:
        return parse_text(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise MapError(f"{name} is neither extent text nor the binary form") from None


# -- a map and its refreshes on one stream (the send relay's stdin) -------------------------
#
# `MAP <n>\n` then n bytes of a map in either form, repeated; the first is the map the relay
# starts with, each later one adds pages cached since (a refresh). The stream ends at EOF.

UPDATE_LIMIT = 1 << 30  # a map announcing more than this is not one of ours


def frame_update(data: bytes) -> bytes:
    return b"MAP %d\n" % len(data) + data


def read_updates(stream: BinaryIO, name: str = "the maps on stdin") -> Iterator[RestorableMap]:
    """The maps of an update stream, one by one as they arrive; MapError names the first
    byte that is not what the framing says."""
    offset = 0
    while True:
        line = stream.readline(64)
        if not line:
            return
        words = line.split()
        if len(words) != 2 or words[0] != b"MAP" or not words[1].isdigit() \
                or not line.endswith(b"\n"):
            raise MapError(f"{name}: byte {offset}: expected 'MAP <length>', got {line[:40]!r}")
        size = int(words[1])
        if size > UPDATE_LIMIT:
            raise MapError(f"{name}: byte {offset}: a map of {size} bytes is not one of ours")
        offset += len(line)
        data = stream.read(size)
        if len(data) != size:
            raise MapError(f"{name}: byte {offset}: the map announced {size} bytes, "
                           f"the stream ended after {len(data)}")
        offset += size
        yield parse(data, name)
