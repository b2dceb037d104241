"""WAN framing between the two relays: versioned, sequenced, encrypted and authenticated.

A frame is a 16-byte header, a body (the payload, or its ciphertext: same length) and a
16-byte tag:

    b"PT" | version u8 | type u8 | payload length u32 | sequence u64 | body | tag

With a per-migration secret (what the relays always have) the body is the payload sealed
with AES-256-GCM, the header as associated data, the nonce the frame's sequence number, under
a key of its own per direction (HKDF-SHA256 of the secret): guest memory never crosses the WAN
in clear, a relay accepts only the migration it was started for, and nobody on the WAN can
alter, replay or reorder a frame unnoticed. `encrypt=False` (`--insecure`, for comparison
only) keeps the payload in clear under a keyed BLAKE2b MAC. Without a secret (files written by
`codec encode`) the tag is an xxh3-128 checksum against corruption. Each direction numbers its
frames from 0, so a lost, repeated or reordered frame is caught, and a (key, nonce) pair is
never used twice.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import struct
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import xxhash
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pcteleport.errors import PcteleportError

MAGIC = b"PT"
VERSION = 2  # 2: AES-256-GCM frames (1 had MAC-only frames)
HEADER = struct.Struct(">2sBBIQ")
TAG_SIZE = 16
MAX_PAYLOAD = 64 << 20
Buffer = bytes | bytearray | memoryview  # what a payload may be given as

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

# Directions: each has its own key, so the two relays never seal under the same nonce.
FORWARD = "forward"  # send relay -> recv relay (the QEMU stream)
BACK = "back"  # recv relay -> send relay (return path, fetches)


class WanError(PcteleportError):
    pass


class Sealer:
    """Seals and opens frame bodies for one direction: AES-256-GCM, a keyed MAC, or a checksum
    (see the module docstring)."""

    def __init__(self, secret: bytes | None, direction: str, encrypt: bool = True) -> None:
        if direction not in (FORWARD, BACK):
            raise ValueError(f"direction {direction!r}")
        self.keyed = bool(secret)
        self.encrypting = bool(secret) and encrypt
        self._aead: AESGCM | None = None
        self._mac_key = b""
        if secret:
            kind = "aes-256-gcm" if encrypt else "blake2b-mac"
            key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"pcteleport-wan-v2",
                       info=f"{kind} {direction}".encode()).derive(secret)
            if encrypt:
                self._aead = AESGCM(key)
            else:
                self._mac_key = key

    def frame(self, header: bytes, seq: int, parts: Sequence[Buffer]) -> bytes:
        """header + body + tag, the payload given in parts: built in one piece, so a frame's
        bytes are copied once (not once per step: payload, + tag, header +)."""
        if self._aead is not None:
            payload = parts[0] if len(parts) == 1 else b"".join(parts)
            return header + self._aead.encrypt(_nonce(seq), payload, header)
        return b"".join([header, *parts, self._tag(header, parts)])

    def open(self, header: bytes, seq: int, body: bytes) -> bytes | None:
        """The payload, or None if the body does not open under this key (or was altered)."""
        if self._aead is not None:
            try:
                return self._aead.decrypt(_nonce(seq), body, header)
            except InvalidTag:
                return None
        payload, tag = body[:-TAG_SIZE], body[-TAG_SIZE:]
        return payload if hmac.compare_digest(tag, self._tag(header, (payload,))) else None

    def _tag(self, header: bytes, parts: Sequence[Buffer]) -> bytes:
        if self._mac_key:
            h = hashlib.blake2b(key=self._mac_key, digest_size=TAG_SIZE)
            h.update(header)
        else:
            h = xxhash.xxh3_128(header)
        for part in parts:
            h.update(part)
        return h.digest()


def _nonce(seq: int) -> bytes:
    return b"\0\0\0\0" + seq.to_bytes(8, "big")


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

    def __init__(self, write: Callable[[bytes], Any], secret: bytes | None = None,
                 direction: str = FORWARD, encrypt: bool = True) -> None:
        self._write = write
        self._sealer = Sealer(secret, direction, encrypt)
        self.seq = 0
        self.bytes_out = 0
        self._lock = threading.Lock()  # the encoder and the back channel share one socket

    def send(self, ftype: int, payload: Buffer = b"", *more: Buffer) -> None:
        """One frame; its payload is `payload` and `more` after it, joined (in one copy with
        the header and tag: a caller need not join them first)."""
        parts = (payload, *more)
        length = sum(map(len, parts)) if more else len(payload)
        if length > MAX_PAYLOAD:
            raise WanError(f"frame payload of {length} bytes is over the limit")
        with self._lock:
            header = HEADER.pack(MAGIC, VERSION, ftype, length, self.seq)
            frame = self._sealer.frame(header, self.seq, parts)
            self.seq += 1
            self.bytes_out += len(frame)
            self._write(frame)

    def send_json(self, ftype: int, value: dict[str, Any]) -> None:
        self.send(ftype, json.dumps(value, separators=(",", ":")).encode())


class FrameReader:
    """Reads and checks frames; `read_exact(n)` returns n bytes, or fewer at end of stream."""

    def __init__(self, read_exact: Callable[[int], bytes], secret: bytes | None = None,
                 direction: str = FORWARD, encrypt: bool = True) -> None:
        self._read = read_exact
        self._sealer = Sealer(secret, direction, encrypt)
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
        if seq != self.seq:
            raise WanError(f"gap in WAN sequence numbers: expected frame {self.seq}, got {seq}")
        payload = self._sealer.open(header, seq, body)
        if payload is None:
            if self._sealer.keyed:
                raise WanError(
                    f"WAN frame {self.seq} failed authentication: wrong migration secret, one "
                    "end --insecure and the other not, or the data was altered in transit")
            raise WanError(f"WAN frame {self.seq} has a bad checksum: the data was corrupted")
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
