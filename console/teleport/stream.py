"""Parser for QEMU's precopy migration stream (format version 3, QEMU 7.2 and newer).

The parser walks the stream exactly as far as page cache teleportation needs: the header,
the CONFIGURATION section, RAM's START / PART / END sections record by record, and return-path
commands. Everything after the first FULL section (non-iterable device state, EOF, the JSON
VM description) is handed on verbatim, since device state is not length-prefixed and only
the destination's own device models could parse it.

It yields `Chunk`s whose raw bytes, concatenated, are exactly the input stream: a consumer
that writes `chunk.raw` (and `chunk.page` for pages) reproduces the stream byte for byte.
"""

from __future__ import annotations

import select
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from pcteleport.errors import PcteleportError

QEMU_VM_FILE_MAGIC = 0x5145564D  # "QEVM"
QEMU_VM_FILE_VERSION = 3

# Section and stream markers (migration/savevm.c).
VM_EOF = 0x00
VM_SECTION_START = 0x01
VM_SECTION_PART = 0x02
VM_SECTION_END = 0x03
VM_SECTION_FULL = 0x04
VM_SUBSECTION = 0x05
VM_VMDESCRIPTION = 0x06
VM_CONFIGURATION = 0x07
VM_COMMAND = 0x08
VM_SECTION_FOOTER = 0x7E

# Return-path commands we can carry (migration/savevm.c enum qemu_vm_cmd).
MIG_CMD_OPEN_RETURN_PATH = 1
MIG_CMD_PING = 2
MIG_CMD_SWITCHOVER_START = 11  # QEMU 10: a bare marker, carried as is
PRECOPY_COMMANDS = {MIG_CMD_OPEN_RETURN_PATH, MIG_CMD_PING, MIG_CMD_SWITCHOVER_START}
POSTCOPY_COMMANDS = {3, 4, 5, 6, 7, 9, 10}
COMMAND_NAMES = {
    0: "invalid",
    1: "open return path",
    2: "ping",
    3: "postcopy advise",
    4: "postcopy listen",
    5: "postcopy run",
    6: "postcopy ram discard",
    7: "packaged (postcopy)",
    8: "enable colo",
    9: "postcopy resume",
    10: "recv bitmap",
    11: "switchover start",
}

# RAM record flags (migration/ram.c); the low 12 bits of each be64 record header.
RAM_FLAG_FULL = 0x01
RAM_FLAG_ZERO = 0x02
RAM_FLAG_MEM_SIZE = 0x04
RAM_FLAG_PAGE = 0x08
RAM_FLAG_EOS = 0x10
RAM_FLAG_CONTINUE = 0x20
RAM_FLAG_XBZRLE = 0x40
RAM_FLAG_HOOK = 0x80
RAM_FLAG_COMPRESS_PAGE = 0x100
RAM_FLAG_MULTIFD_FLUSH = 0x200
PAGE_SIZE = 4096
_FLAG_MASK = PAGE_SIZE - 1

# Flags that mean a capability the codec does not handle, and its name for the operator.
UNSUPPORTED_RAM_FLAGS = {
    RAM_FLAG_XBZRLE: "xbzrle",
    RAM_FLAG_COMPRESS_PAGE: "compress",
    RAM_FLAG_HOOK: "rdma",
    RAM_FLAG_FULL: "full-page (pre-1.0 stream)",
}
MULTIFD_MAGIC = 0x11223344  # the first bytes of a multifd channel
DEVICE_STATE_KEEP = 64 << 20  # device state is small; past this, stop keeping a copy

_BE32 = struct.Struct(">I")
_BE64 = struct.Struct(">Q")


class StreamError(PcteleportError):
    """The QEMU stream is malformed, truncated or uses something we refuse to touch."""


class UnsupportedStream(StreamError):
    """The stream uses a migration capability the teleport codec does not handle."""

    def __init__(self, capability: str, detail: str = "") -> None:
        self.capability = capability
        msg = (
            f"the migration uses '{capability}', which teleport does not handle: "
            "turn it off for teleport migrations"
        )
        super().__init__(msg + (f" ({detail})" if detail else ""))


class Reader(Protocol):
    """Where stream bytes come from: `read_some` returns b"" at end of stream."""

    def read_some(self, n: int) -> bytes: ...

    def ready(self) -> bool:
        """True if `read_some` would return without waiting."""
        ...


class FileReader:
    """A Reader over a binary file (files never make a reader wait)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f

    def read_some(self, n: int) -> bytes:
        return self._f.read(n)

    def ready(self) -> bool:
        return True


class SocketReader:
    """A Reader over a connected socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def read_some(self, n: int) -> bytes:
        return self._sock.recv(n)

    def ready(self) -> bool:
        readable, _, _ = select.select([self._sock], [], [], 0)
        return bool(readable)


class BytesReader:
    """A Reader over bytes in memory, handing them out in pieces of at most `piece` bytes."""

    def __init__(self, data: bytes, piece: int = 1 << 20) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._piece = piece

    def read_some(self, n: int) -> bytes:
        n = min(n, self._piece)
        out = bytes(self._data[self._pos : self._pos + n])
        self._pos += len(out)
        return out

    def ready(self) -> bool:
        return True


class ByteSource:
    """Buffered reads of exact sizes over a Reader, counting the bytes consumed.

    `on_wait` is called before a read that would block, so that a consumer can flush what
    it holds: QEMU may be waiting on the destination's answer to bytes we still hold.
    """

    CHUNK = 1 << 20
    JOIN_WHOLE = 8 << 10  # a piece with no more than this left over is joined whole

    def __init__(
        self,
        reader: Reader,
        on_wait: Callable[[], None] | None = None,
        on_data: Callable[[bytes], object] | None = None,
    ) -> None:
        self._reader = reader
        self._buf = b""
        self._pos = 0
        self._consumed_before = 0  # bytes of earlier buffers
        # a piece read but not yet the buffer, and where its unread bytes start (see _fill)
        self._next: bytes | None = None
        self._next_pos = 0
        self.on_wait = on_wait
        self.on_data = on_data  # sees every byte read, once, in order (hashing the stream)

    @property
    def offset(self) -> int:
        """Bytes consumed so far (the position in the stream)."""
        return self._consumed_before + self._pos

    def _fill(self, need: int) -> bool:
        """Make at least `need` unread bytes available; False at end of stream.

        A record cut by the end of a read is joined from the buffer's rest and only the bytes
        of the next piece it needs; the piece becomes the buffer once that is read, so a big
        read is not copied whole to prepend a few bytes to it.
        """
        while (have := len(self._buf) - self._pos) < need:
            if self._next is not None:
                more, skip, self._next = self._next, self._next_pos, None
            else:
                if self.on_wait is not None and not self._reader.ready():
                    self.on_wait()
                more, skip = self._reader.read_some(max(self.CHUNK, need)), 0
                if not more:
                    return False
                if self.on_data is not None:
                    self.on_data(more)
            if not have:  # nothing left to join: the piece is the buffer
                self._consumed_before += len(self._buf) - skip
                self._buf, self._pos = more, skip
                continue
            self._consumed_before += self._pos
            take = need - have
            if len(more) - skip - take > self.JOIN_WHOLE:
                self._buf = self._buf[self._pos :] + more[skip : skip + take]
                self._next, self._next_pos = more, skip + take
            else:
                self._buf = self._buf[self._pos :] + more[skip:]
            self._pos = 0
        return True

    def read(self, n: int) -> bytes:
        if len(self._buf) - self._pos < n and not self._fill(n):
            raise StreamError(f"stream truncated at byte {self.offset}: wanted {n} more bytes")
        start = self._pos
        self._pos = start + n
        return self._buf[start : self._pos]

    def u8(self) -> int:
        if self._pos >= len(self._buf) and not self._fill(1):
            raise StreamError(f"stream truncated at byte {self.offset}")
        b = self._buf[self._pos]
        self._pos += 1
        return b

    def be32(self) -> int:
        return _BE32.unpack(self.read(4))[0]

    def be64(self) -> int:
        pos = self._pos
        if len(self._buf) - pos >= 8:  # the common case, without a bytes copy
            self._pos = pos + 8
            return _BE64.unpack_from(self._buf, pos)[0]
        return _BE64.unpack(self.read(8))[0]

    def at_eof(self) -> bool:
        return self._pos >= len(self._buf) and not self._fill(1)

    def window(self) -> tuple[bytes, int]:
        """The buffer and the read position in it, for a caller that walks many records in
        place (see StreamParser's runs); it hands the new position back with `skip_to`."""
        return self._buf, self._pos

    def skip_to(self, pos: int) -> None:
        """Consume the buffered bytes up to `pos` (a position `window` gave, or after it)."""
        if not self._pos <= pos <= len(self._buf):
            raise ValueError(f"position {pos} is outside the buffered bytes")
        self._pos = pos

    def available(self) -> bytes:
        """Whatever is buffered or can be read next (b"" at end of stream)."""
        if self._pos >= len(self._buf) and not self._fill(1):
            return b""
        out = self._buf[self._pos :]
        self._pos = len(self._buf)
        return out


# Chunk kinds.
RAW = 0  # bytes to carry as they are
PAGE = 1  # a RAM PAGE record: raw is its header, page its 4096 bytes
ZERO = 2  # a RAM ZERO record (raw holds the whole record)
RUN = 3  # consecutive RAM records of one block (only with runs=True): see Chunk.pages

# The records a run takes in place: PAGE or ZERO continuing the last block. Any other record
# (one naming its block, EOS, a flag we refuse, a bad offset) goes through the record-by-record
# path, so both ways end in the same chunks' bytes and the same errors.
_RUN_PAGE = RAM_FLAG_PAGE | RAM_FLAG_CONTINUE
_RUN_ZERO = RAM_FLAG_ZERO | RAM_FLAG_CONTINUE
RUN_BYTES = 128 << 10  # a run ends past this much: the encoder frames at ~512 KiB


@dataclass(slots=True)
class Chunk:
    kind: int
    raw: bytes | memoryview
    block: str = ""
    offset: int = 0  # page offset inside the RAM block
    page: bytes = b""
    # RUN only: (position of the page's bytes in raw, its offset in the block) per PAGE record,
    # how many ZERO records the run holds, and where raw starts in raw.obj (the stream buffer,
    # bytes: slicing it copies a page faster than a view of it can be compared)
    pages: list[tuple[int, int]] = field(default_factory=list)
    zero: int = 0
    at: int = 0


@dataclass
class StreamInfo:
    """What the parser learned about the stream (filled in as it goes)."""

    machine: str = ""
    ram_total: int = 0
    ram_blocks: dict[str, int] = field(default_factory=dict)  # name -> used length
    sections: dict[int, str] = field(default_factory=dict)  # section id -> idstr
    return_path: bool = False
    device_state_offset: int | None = None  # where verbatim device state starts
    commands: list[str] = field(default_factory=list)
    device_state: bytearray = field(default_factory=bytearray)  # kept to find the tail

    def optional_tail(self) -> int:
        """Bytes at the end a destination QEMU never reads: EOF's trailing VM description.

        QEMU stops reading at its EOF marker and closes the connection, so a relay may find
        the destination gone while these bytes are still on their way.
        """
        data = self.device_state
        pos = data.rfind(b"\x00" + bytes([VM_VMDESCRIPTION]))
        while pos >= 0:
            start = pos + 2
            if start + 4 <= len(data):
                (length,) = _BE32.unpack_from(data, start)
                if start + 4 + length == len(data):
                    return len(data) - pos - 1
            pos = data.rfind(b"\x00" + bytes([VM_VMDESCRIPTION]), 0, pos)
        return 0


class StreamParser:
    """Walks a QEMU migration stream and yields Chunks that reproduce it byte for byte.

    With `runs=True` most RAM records come batched: one RUN chunk (a view of the stream
    buffer, no copy) per stretch of records of one block, instead of a chunk per record. A
    consumer that handles pages in bulk (the encoder) then pays Python's per-object cost per
    run, not per page; the record-by-record path stays for records a run does not take.
    """

    def __init__(self, source: ByteSource, runs: bool = False) -> None:
        self.src = source
        self.info = StreamInfo()
        self.runs = runs
        self._last_block: str | None = None

    # -- helpers ------------------------------------------------------------------------

    def _idstr(self) -> tuple[bytes, str]:
        n = self.src.u8()
        name = self.src.read(n)
        return bytes([n]) + name, name.decode("latin-1")

    # -- top level -----------------------------------------------------------------------

    def chunks(self) -> Iterator[Chunk]:
        src = self.src
        head = src.read(8)
        magic, version = struct.unpack(">II", head)
        if magic != QEMU_VM_FILE_MAGIC:
            if magic == MULTIFD_MAGIC:
                raise UnsupportedStream("multifd", "a multifd channel connected")
            raise StreamError(f"not a QEMU migration stream (magic 0x{magic:08x})")
        if version != QEMU_VM_FILE_VERSION:
            raise StreamError(f"QEMU migration stream version {version}; only 3 is known")
        yield Chunk(RAW, head)

        while True:
            if src.at_eof():
                raise StreamError(f"stream ended at byte {src.offset} before QEMU's EOF marker")
            start = src.offset
            kind = src.u8()
            if kind == VM_CONFIGURATION:
                yield Chunk(RAW, bytes([kind]) + self._configuration())
            elif kind == VM_COMMAND:
                yield Chunk(RAW, bytes([kind]) + self._command())
            elif kind in (VM_SECTION_START, VM_SECTION_PART, VM_SECTION_END):
                yield from self._iterable_section(kind)
            elif kind in (VM_SECTION_FULL, VM_EOF):
                # Device state: not length-prefixed, so carry the rest verbatim.
                self.info.device_state_offset = start
                keep = self.info.device_state
                keep.append(kind)
                yield Chunk(RAW, bytes([kind]))
                while rest := src.available():
                    if len(keep) < DEVICE_STATE_KEEP:
                        keep += rest
                    yield Chunk(RAW, rest)
                return
            else:
                raise StreamError(f"unknown section type 0x{kind:02x} at byte {start}")

    def _configuration(self) -> bytes:
        src = self.src
        n = src.be32()
        name = src.read(n)
        self.info.machine = name.decode("latin-1")
        out = [_BE32.pack(n), name]
        # Optional subsections (capabilities, uuid) come as VM_SUBSECTION records.
        while self._peek() == VM_SUBSECTION:
            out.append(self._config_subsection())
        return b"".join(out)

    def _peek(self) -> int | None:
        src = self.src
        if src.at_eof():
            return None
        b = src.u8()
        src._pos -= 1  # a one-byte look-ahead inside the buffer just filled
        return b

    def _config_subsection(self) -> bytes:
        src = self.src
        src.u8()
        raw_name, name = self._idstr()
        version = src.read(4)
        out = [bytes([VM_SUBSECTION]), raw_name, version]
        if name == "configuration/capabilities":
            count_raw = src.read(4)
            out.append(count_raw)
            caps = []
            for _ in range(_BE32.unpack(count_raw)[0]):
                raw_cap, cap = self._idstr()
                out.append(raw_cap)
                caps.append(cap)
            for cap in caps:
                if cap in ("x-ignore-shared", "mapped-ram"):
                    raise UnsupportedStream(cap)
        elif name == "configuration/uuid":
            out.append(src.read(16))
        else:
            raise StreamError(f"unknown configuration subsection '{name}'")
        return b"".join(out)

    def _command(self) -> bytes:
        src = self.src
        raw = src.read(4)
        cmd, length = struct.unpack(">HH", raw)
        if cmd not in PRECOPY_COMMANDS:
            name = COMMAND_NAMES.get(cmd, f"command {cmd}")
            if cmd in POSTCOPY_COMMANDS:
                raise UnsupportedStream("postcopy-ram", f"stream carries '{name}'")
            raise UnsupportedStream(name)
        if cmd == MIG_CMD_OPEN_RETURN_PATH:
            self.info.return_path = True
        self.info.commands.append(COMMAND_NAMES.get(cmd, str(cmd)))
        return raw + src.read(length)

    def _iterable_section(self, kind: int) -> Iterator[Chunk]:
        src = self.src
        section_id_raw = src.read(4)
        section_id = _BE32.unpack(section_id_raw)[0]
        head = [bytes([kind]), section_id_raw]
        if kind == VM_SECTION_START:
            raw_name, name = self._idstr()
            head += [raw_name, src.read(8)]  # instance id, version id
            self.info.sections[section_id] = name
        else:
            name = self.info.sections.get(section_id, "")
            if not name:
                raise StreamError(
                    f"section {section_id} at byte {src.offset - 5} was never started"
                )
        if name != "ram":
            raise UnsupportedStream(name, "an iterative device other than RAM")
        yield Chunk(RAW, b"".join(head))
        yield from self._ram(kind == VM_SECTION_START)
        footer = src.read(5)
        if footer[0] != VM_SECTION_FOOTER or footer[1:] != section_id_raw:
            raise StreamError(
                f"section {section_id} ({name}) has no footer at byte {src.offset - 5}: "
                "the stream is corrupt or from an unsupported QEMU"
            )
        yield Chunk(RAW, footer)

    def _ram(self, setup: bool) -> Iterator[Chunk]:
        """RAM records up to and including EOS."""
        src = self.src
        pack = _BE64.pack
        while True:
            if self.runs and self._last_block is not None:
                run = self._run()
                if run is not None:
                    yield run
                    continue
            hdr = src.be64()
            flags = hdr & _FLAG_MASK
            addr = hdr - flags
            if flags & RAM_FLAG_MEM_SIZE:
                if not setup:
                    raise StreamError(f"RAM size record outside setup at byte {src.offset - 8}")
                yield Chunk(RAW, pack(hdr) + self._ram_blocks(addr))
                continue
            if flags & RAM_FLAG_EOS:
                yield Chunk(RAW, pack(hdr))
                return
            if flags & RAM_FLAG_MULTIFD_FLUSH and not flags & (RAM_FLAG_PAGE | RAM_FLAG_ZERO):
                raise UnsupportedStream("multifd")
            for bit, cap in UNSUPPORTED_RAM_FLAGS.items():
                if flags & bit:
                    raise UnsupportedStream(cap, f"RAM record at byte {src.offset - 8}")
            if flags & RAM_FLAG_CONTINUE:
                block = self._last_block
                if block is None:
                    raise StreamError(f"RAM record continues no block at byte {src.offset - 8}")
                prefix = pack(hdr)
            else:
                raw_name, block = self._idstr()
                if block not in self.info.ram_blocks:
                    raise StreamError(f"RAM record names unknown block '{block}'")
                self._last_block = block
                prefix = pack(hdr) + raw_name
            if addr + PAGE_SIZE > self.info.ram_blocks[block]:
                raise StreamError(
                    f"RAM record at byte {src.offset} is outside block '{block}' "
                    f"(offset 0x{addr:x})"
                )
            if flags & RAM_FLAG_PAGE:
                yield Chunk(PAGE, prefix, block, addr, src.read(PAGE_SIZE))
            elif flags & RAM_FLAG_ZERO:
                yield Chunk(ZERO, prefix + src.read(1), block, addr)
            else:
                raise StreamError(f"RAM record with flags 0x{flags:x} at byte {src.offset - 8}")

    def _run(self) -> Chunk | None:
        """The buffered records continuing the last block, as one RUN chunk; None if the next
        record is not one a run takes (or is not wholly buffered)."""
        src = self.src
        buf, start = src.window()
        block = self._last_block
        assert block is not None
        limit = self.info.ram_blocks[block] - PAGE_SIZE  # the last page offset inside the block
        end = len(buf)
        stop = min(end, start + RUN_BYTES)
        unpack = _BE64.unpack_from
        pages: list[tuple[int, int]] = []
        add = pages.append
        zero = 0
        pos = start
        while pos + 8 <= stop:
            hdr = unpack(buf, pos)[0]
            flags = hdr & _FLAG_MASK
            addr = hdr - flags
            if addr > limit:
                break
            if flags == _RUN_PAGE:
                if pos + 8 + PAGE_SIZE > end:
                    break
                add((pos + 8 - start, addr))
                pos += 8 + PAGE_SIZE
            elif flags == _RUN_ZERO:
                if pos + 9 > end:
                    break
                zero += 1
                pos += 9
            else:
                break
        if pos == start:
            return None
        src.skip_to(pos)
        return Chunk(RUN, memoryview(buf)[start:pos], block, pages=pages, zero=zero, at=start)

    def _ram_blocks(self, total: int) -> bytes:
        src = self.src
        out = []
        seen = 0
        self.info.ram_total = total
        while seen < total:
            raw_name, name = self._idstr()
            length_raw = src.read(8)
            length = _BE64.unpack(length_raw)[0]
            self.info.ram_blocks[name] = length
            out += [raw_name, length_raw]
            seen += length
        if seen != total:
            raise StreamError(f"RAM blocks add up to {seen} bytes, not the announced {total}")
        return b"".join(out)
