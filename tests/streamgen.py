"""Builds QEMU-format migration streams for codec tests (format version 3, as QEMU 7.2 writes).

Real streams captured from QEMU are tested elsewhere; these let property tests cover shapes
QEMU produces rarely (many blocks, CONTINUE chains, pages re-sent in later rounds).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

PAGE = 4096


def _name(s: str) -> bytes:
    b = s.encode()
    return bytes([len(b)]) + b


@dataclass
class StreamBuilder:
    machine: str = "pc-i440fx-7.2"
    blocks: dict[str, int] = field(default_factory=lambda: {"pc.ram": 64 * PAGE})
    return_path: bool = True
    parts: list[bytes] = field(default_factory=list)
    _last: str | None = None

    def header(self) -> bytes:
        out = struct.pack(">II", 0x5145564D, 3)
        m = self.machine.encode()
        out += b"\x07" + struct.pack(">I", len(m)) + m
        if self.return_path:
            out += b"\x08" + struct.pack(">HH", 1, 0)
        return out

    def start(self) -> bytes:
        body = struct.pack(">Q", sum(self.blocks.values()) | 0x04)
        for name, size in self.blocks.items():
            body += _name(name) + struct.pack(">Q", size)
        body += struct.pack(">Q", 0x10)
        return (
            b"\x01" + struct.pack(">I", 2) + _name("ram") + struct.pack(">II", 0, 4) + body
            + b"\x7e" + struct.pack(">I", 2)
        )

    def record(self, block: str, offset: int, page: bytes | None) -> bytes:
        """A PAGE record (page bytes given) or a ZERO record (page None)."""
        flags = 0x08 if page is not None else 0x02
        if block == self._last:
            out = struct.pack(">Q", offset | flags | 0x20)
        else:
            out = struct.pack(">Q", offset | flags) + _name(block)
            self._last = block
        return out + (page if page is not None else b"\x00")

    def section(self, records: list[bytes], end: bool = False) -> bytes:
        kind = b"\x03" if end else b"\x02"
        return (
            kind + struct.pack(">I", 2) + b"".join(records) + struct.pack(">Q", 0x10)
            + b"\x7e" + struct.pack(">I", 2)
        )

    @staticmethod
    def ping(value: int) -> bytes:
        return b"\x08" + struct.pack(">HHI", 2, 4, value)

    @staticmethod
    def device_state(payload: bytes) -> bytes:
        # A FULL section, EOF, then the JSON VM description, as QEMU ends a stream.
        full = b"\x04" + struct.pack(">I", 3) + _name("timer") + struct.pack(">II", 0, 2)
        desc = b'{"page_size":4096,"devices":[]}'
        return full + payload + b"\x7e" + struct.pack(">I", 3) + b"\x00" + b"\x06" + struct.pack(
            ">I", len(desc)) + desc


def build_stream(rounds: list[list[tuple[str, int, bytes | None]]], **kw: object) -> bytes:
    """A whole stream: header, setup, one PART section per round but the last (END)."""
    sb = StreamBuilder(**kw)  # type: ignore[arg-type]
    out = [sb.header(), sb.start()]
    for i, rnd in enumerate(rounds):
        recs = [sb.record(b, o, p) for b, o, p in rnd]
        out.append(sb.section(recs, end=i == len(rounds) - 1))
        if i == 0:
            out.append(sb.ping(7))
    if not rounds:
        out.append(sb.section([], end=True))
    out.append(sb.device_state(b"device-state-bytes" * 3))
    return b"".join(out)
