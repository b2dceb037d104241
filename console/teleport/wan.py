"""WAN framing between the two relays: versioned, sequenced, every frame checksummed.

A frame is a 16-byte header, a payload and a 16-byte tag:

    b"PT" | version u8 | type u8 | payload length u32 | sequence u64 | payload | tag

The tag covers header and payload. With a per-migration secret it is a keyed BLAKE2b MAC,
so a relay accepts only the migration it was started for and nobody on the WAN can alter
a frame unnoticed; without one it is an xxh3-128 checksum against corruption. Each
direction numbers its frames from 0, so a lost, repeated or reordered frame is caught.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import xxhash

from pcteleport.errors import PcteleportError

MAGIC = b"PT"
VERSION = 1
HEADER = struct.Struct(">2sBBIQ")
TAG_SIZE = 16
MAX_PAYLOAD = 64 << 20

# Frame types.
HELLO = 1  # JSON: who is talking, and what about
DATA = 2  # a piece of the encoded QEMU stream
END = 3  # JSON: the QEMU stream ended; totals to verify
ERROR = 4  # UTF-8: the sender gave up, and why
RETURN = 5  # return-path bytes, destination QEMU -> source QEMU
FETCH = 6  # be64 reference ids whose replica block did not verify
PAGE = 7  # be64 reference id + the page, the answer to a FETCH
NAMES = {HELLO: "hello", DATA: "data", END: "end", ERROR: "error", RETURN: "return",
         FETCH: "fetch", PAGE: "page"}


class WanError(PcteleportError):
    pass


def _tagger(secret: bytes | None) -> Callable[[bytes, bytes], bytes]:
    if secret:
        def mac(header: bytes, payload: bytes) -> bytes:
            h = hashlib.blake2b(key=secret[:64], digest_size=TAG_SIZE)
            h.update(header)
            h.update(payload)
            return h.digest()
        return mac

    def checksum(header: bytes, payload: bytes) -> bytes:
        h = xxhash.xxh3_128(header)
        h.update(payload)
        return h.digest()
    return checksum


@dataclass(slots=True)
class Frame:
    type: int
    seq: int
    payload: bytes

    def json(self) -> dict[str, Any]:
        try:
            value = json.loads(self.payload)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python's stack
            raise WanError(f"{NAMES.get(self.type, self.type)} frame holds no valid JSON") from None
        if not isinstance(value, dict):
            raise WanError(f"{NAMES.get(self.type, self.type)} frame holds no JSON object")
        return value


class FrameWriter:
    """Turns payloads into frames; `write` is whatever sends bytes (a socket's sendall)."""

    def __init__(self, write: Callable[[bytes], Any], secret: bytes | None = None) -> None:
        self._write = write
        self._tag = _tagger(secret)
        self.seq = 0
        self.bytes_out = 0
        self._lock = threading.Lock()  # the encoder and the back channel share one socket

    def send(self, ftype: int, payload: bytes = b"") -> None:
        if len(payload) > MAX_PAYLOAD:
            raise WanError(f"frame payload of {len(payload)} bytes is over the limit")
        with self._lock:
            header = HEADER.pack(MAGIC, VERSION, ftype, len(payload), self.seq)
            self.seq += 1
            frame = header + payload + self._tag(header, payload)
            self.bytes_out += len(frame)
            self._write(frame)

    def send_json(self, ftype: int, value: dict[str, Any]) -> None:
        self.send(ftype, json.dumps(value, separators=(",", ":")).encode())


class FrameReader:
    """Reads and checks frames; `read_exact(n)` returns n bytes, or fewer at end of stream."""

    def __init__(self, read_exact: Callable[[int], bytes], secret: bytes | None = None) -> None:
        self._read = read_exact
        self._tag = _tagger(secret)
        self._keyed = bool(secret)
        self.seq = 0
        self.bytes_in = 0

    def next(self) -> Frame | None:
        """The next frame, or None at a clean end of stream (between frames)."""
        header = self._read(HEADER.size)
        if not header:
            return None
        if len(header) < HEADER.size:
            raise WanError(f"WAN stream truncated inside frame {self.seq}'s header")
        magic, version, ftype, length, seq = HEADER.unpack(header)
        if magic != MAGIC:
            raise WanError(f"not a pcteleport WAN stream (frame {self.seq} has bad magic)")
        if version != VERSION:
            raise WanError(f"WAN frame version {version}; this pcteleport speaks {VERSION}")
        if length > MAX_PAYLOAD:
            raise WanError(f"WAN frame {seq} announces {length} bytes, over the limit")
        body = self._read(length + TAG_SIZE)
        if len(body) < length + TAG_SIZE:
            raise WanError(f"WAN stream truncated inside frame {self.seq}")
        payload, tag = body[:length], body[length:]
        if not hmac.compare_digest(tag, self._tag(header, payload)):
            if self._keyed:
                raise WanError(
                    f"WAN frame {self.seq} failed authentication: wrong migration secret "
                    "or the data was altered in transit"
                )
            raise WanError(f"WAN frame {self.seq} has a bad checksum: the data was corrupted")
        if seq != self.seq:
            raise WanError(f"gap in WAN sequence numbers: expected frame {self.seq}, got {seq}")
        self.seq += 1
        self.bytes_in += HEADER.size + length + TAG_SIZE
        return Frame(ftype, seq, payload)


def file_read_exact(f: Any) -> Callable[[int], bytes]:
    """read_exact over a binary file object (its read already returns n bytes unless at EOF)."""
    return f.read


def socket_read_exact(sock: Any) -> Callable[[int], bytes]:
    """read_exact over a socket: loops until n bytes or end of stream."""

    def read(n: int) -> bytes:
        parts = []
        while n:
            piece = sock.recv(min(n, 1 << 20))
            if not piece:
                break
            parts.append(piece)
            n -= len(piece)
        return b"".join(parts)

    return read
