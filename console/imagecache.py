"""A site's image cache: raw base images every site holds under the same path with the same
bytes (e.g. `/srv/images/`), each with its checksum beside it, as `sha256sum` writes it
(`<image>.sha256`: "<hex digest>  <name>"), so `sha256sum -c` checks it too.

A checksum file older than its image is stale: it says nothing about the image's bytes now, and
a scan computes the checksum again. This module runs on site hosts (the `pcteleport images`
commands the console starts there over SSH) and on the operator's host (the lab): the standard
library and our own pure code only.

Copying an image between sites (`images sync`) is a stream of records over one TCP connection
(see `Sender`/`Receiver`): the receiver tells where its partial copy ends, the sender sends the
rest in chunks (zstd, or a zero run as a header only, so a sparse base stays sparse), and the
receiver checks the whole file against the expected checksum before it takes the image's name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import json
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

CHECKSUM_SUFFIX = ".sha256"
PARTIAL_SUFFIX = ".partial"
CHUNK = 1 << 20
HASH_CHUNK = 4 << 20


@dataclass(frozen=True)
class ImageInfo:
    """One base image of a site's cache."""

    name: str
    size: int  # bytes (apparent size)
    allocated: int  # bytes the file occupies on disk (a sparse image less than its size)
    sha256: str  # "" when unknown (no checksum file and none computed)
    #: where the checksum came from: "file" (its .sha256, newer than the image), "computed"
    #: (read just now), "stale" (a checksum file older than the image, not trusted),
    #: "missing" (none)
    checksum: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def checksum_path(image: Path) -> Path:
    return image.with_name(image.name + CHECKSUM_SUFFIX)


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    h = hashlib.sha256()
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done)
    return h.hexdigest()


def write_checksum(image: Path, digest: str) -> None:
    """The image's checksum file, written whole or not at all."""
    out = checksum_path(image)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(f"{digest}  {image.name}\n")
    os.replace(tmp, out)


def read_checksum(image: Path) -> tuple[str, str]:
    """(digest, state): state "file" for a checksum file at least as new as the image,
    "stale" for an older one (digest ""), "missing" without one."""
    side = checksum_path(image)
    try:
        text = side.read_text()
        fresh = side.stat().st_mtime_ns > image.stat().st_mtime_ns
    except FileNotFoundError:
        return "", "missing"
    digest = parse_checksum(text, image.name)
    if not digest:
        return "", "missing"
    return (digest, "file") if fresh else ("", "stale")


def settle(image: Path) -> None:
    """Date the image a second back, before its checksum file is written: a change made in the
    same clock tick as the checksum (timestamps are coarser than a write) still shows as newer
    than it."""
    past = time.time() - 1
    os.utime(image, (past, past))


def parse_checksum(text: str, name: str) -> str:
    """The digest a sha256sum line gives for `name` ("" if none does)."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("*") == name and _is_hex64(parts[0]):
            return parts[0].lower()
    return ""


def _is_hex64(s: str) -> bool:
    return len(s) == 64 and all(c in "0123456789abcdefABCDEF" for c in s)


def is_image(path: Path) -> bool:
    """A base image of the cache (not a checksum file, a partial copy or a temporary)."""
    name = path.name
    return (path.is_file() and not name.startswith(".")
            and not name.endswith((CHECKSUM_SUFFIX, PARTIAL_SUFFIX, ".tmp",
                                   PARTIAL_SUFFIX + CHECKSUM_SUFFIX)))


def info(image: Path, compute: bool = True) -> ImageInfo:
    """An image's size and checksum; with `compute`, a missing or stale checksum is read from
    the bytes and written beside the image."""
    st = image.stat()
    digest, state = read_checksum(image)
    if not digest and compute:
        before = image.stat().st_mtime_ns
        digest, state = sha256_file(image), "computed"
        if image.stat().st_mtime_ns == before:  # not written to while it was read
            with contextlib.suppress(OSError):
                if before >= time.time_ns() - 10**9:
                    settle(image)  # (just written: see settle)
                write_checksum(image, digest)
    return ImageInfo(image.name, st.st_size, st.st_blocks * 512, digest, state)


def scan(directory: Path, names: list[str] | None = None, compute: bool = True,
         verify: bool = False) -> list[ImageInfo]:
    """The images of a cache directory (or only `names`: an absent one is left out).
    `verify` reads every image's bytes, whatever its checksum file says."""
    if not directory.is_dir():
        return []
    paths = ([directory / n for n in names] if names is not None
             else sorted(p for p in directory.iterdir()))
    out = []
    for p in paths:
        if not p.exists() or not is_image(p):
            continue
        if verify:
            digest = sha256_file(p)
            recorded, _ = read_checksum(p)
            st = p.stat()
            out.append(ImageInfo(p.name, st.st_size, st.st_blocks * 512, digest,
                                 "computed" if recorded in ("", digest) else "differs"))
            if not recorded:
                with contextlib.suppress(OSError):
                    write_checksum(p, digest)
        else:
            out.append(info(p, compute))
    return out


def place(source: Path, dest: Path, digest: str) -> bool:
    """Copy `source` (sparse) to `dest` with its checksum file, unless `dest` already holds
    those bytes by its own checksum file. Returns whether it copied."""
    if dest.exists():
        have, state = read_checksum(dest)
        if state == "file" and have == digest and dest.stat().st_size == source.stat().st_size:
            return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    _sparse_copy(source, tmp)
    os.chmod(tmp, 0o444)  # a base is never written: overlays take the writes
    settle(tmp)
    os.replace(tmp, dest)
    write_checksum(dest, digest)
    return True


def _sparse_copy(src: Path, dst: Path) -> None:
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        size = os.fstat(fi.fileno()).st_size
        for off, _length, data in _chunks(fi, 0, size):
            if data:
                fo.seek(off)
                fo.write(data)
        fo.truncate(size)


MAX_ZERO_RUN = 1 << 30  # a zero record's length fits its 32-bit field


def _next_data(fd: int, off: int, size: int) -> int:
    """Where the file's next data at or after `off` starts (`size` if none)."""
    try:
        return min(os.lseek(fd, off, os.SEEK_DATA), size)
    except OSError as exc:
        return size if exc.errno == errno.ENXIO else off  # ENXIO: only a hole is left


def _chunks(f, start: int, size: int) -> Iterator[tuple[int, int, bytes]]:
    """(offset, length, bytes) of [start, size) in pieces of at most CHUNK; bytes b"" for a
    run of zeros (a hole, or a chunk of zero bytes)."""
    fd = f.fileno()
    off = start
    while off < size:
        data_at = _next_data(fd, off, size)
        if data_at > off:
            run = min(data_at - off, MAX_ZERO_RUN)
            yield off, run, b""
            off += run
            continue
        length = min(CHUNK - off % CHUNK, size - off)
        f.seek(off)
        data = f.read(length)
        if len(data) != length:
            raise OSError(f"short read at byte {off}")
        yield off, length, b"" if data.count(0) == length else data
        off += length


# --- sync: one image from one site's cache to another's, over one TCP connection ----------

MAGIC = b"PCTIMG1\n"
HEAD = struct.Struct(">BQI")  # kind, offset, payload length
K_DATA, K_ZERO, K_END = 1, 2, 3


class SyncError(Exception):
    pass


def _zstd():
    import zstandard

    return zstandard


def _send_all(sock: socket.socket, data: bytes) -> None:
    sock.sendall(data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        part = sock.recv(min(n - len(buf), 1 << 20))
        if not part:
            raise SyncError("the other end closed the connection mid-copy")
        buf += part
    return bytes(buf)


def _emit(out: Callable[[dict], None], event: str, **fields: object) -> None:
    out({"event": event, **fields})


def partial_of(image: Path) -> Path:
    return image.with_name(image.name + PARTIAL_SUFFIX)


def receive(directory: Path, name: str, digest: str, size: int, listen: tuple[str, int],
            secret: str, out: Callable[[dict], None], timeout: float = 600) -> int:
    """The receiving end: listen, take one sender with the secret, continue the partial copy
    where it ends, verify the whole, then give it the image's name and checksum file."""
    image = directory / name
    part = partial_of(image)
    part_sum = checksum_path(part)
    directory.mkdir(parents=True, exist_ok=True)
    if image.exists():
        have, state = read_checksum(image)
        if state == "file" and have == digest:
            _emit(out, "done", bytes=0, resumed_from=size, already=True)
            return 0
        raise SyncError(f"{image} exists with other bytes (checksum {have or 'unknown'}): "
                        "remove it first if it is not in use")
    # a partial copy of other bytes (another version of the image) is no start
    if part.exists() and parse_checksum(part_sum.read_text() if part_sum.exists() else "",
                                        name) != digest:
        part.unlink()
    if not part.exists():
        part.touch()
        part_sum.write_text(f"{digest}  {name}\n")
    start = (part.stat().st_size // CHUNK) * CHUNK  # a chunk cut short is sent again
    srv = socket.create_server(listen, reuse_port=False)
    srv.settimeout(timeout)
    _emit(out, "listening", address=f"{listen[0]}:{srv.getsockname()[1]}", offset=start,
          pid=os.getpid())
    try:
        while True:
            conn, peer = srv.accept()
            conn.settimeout(timeout)
            try:
                hello = _recv_exact(conn, len(MAGIC) + 64)
            except (SyncError, OSError):
                conn.close()
                continue
            if hello[:len(MAGIC)] != MAGIC or not hmac.compare_digest(
                    hello[len(MAGIC):], secret.encode()[:64].ljust(64, b"\0")):
                _emit(out, "refused", peer=str(peer[0]))
                conn.close()
                continue
            break
    finally:
        srv.close()
    with conn:
        conn.sendall(struct.pack(">Q", start))
        dec = _zstd().ZstdDecompressor()
        received = 0
        last = time.monotonic()
        with open(part, "r+b") as f:
            f.truncate(start)
            while True:
                kind, off, n = HEAD.unpack(_recv_exact(conn, HEAD.size))
                if kind == K_END:
                    break
                if off < start or off > size:
                    raise SyncError(f"a record at byte {off} outside the copy")
                if kind == K_ZERO:
                    end = off + n
                    f.truncate(max(end, os.fstat(f.fileno()).st_size))
                elif kind == K_DATA:
                    data = dec.decompress(_recv_exact(conn, n))
                    f.seek(off)
                    f.write(data)
                    end = off + len(data)
                    received += n
                else:
                    raise SyncError(f"unknown record {kind}")
                if end > size:
                    raise SyncError(f"a record ends at byte {end}, beyond the image's {size}")
                if time.monotonic() - last >= 1:
                    last = time.monotonic()
                    _emit(out, "progress", offset=end, wire_bytes=received)
            f.truncate(size)
            f.flush()
            os.fsync(f.fileno())
        got = sha256_file(part)
        if got != digest:
            part.unlink()
            part_sum.unlink(missing_ok=True)
            conn.sendall(b"BAD\n")
            raise SyncError(f"the copy of {name} does not match its checksum ({got[:16]}… "
                            f"instead of {digest[:16]}…): it was removed; sync again")
        os.chmod(part, 0o444)
        settle(part)
        os.replace(part, image)
        write_checksum(image, digest)
        part_sum.unlink(missing_ok=True)
        conn.sendall(b"OK\n")
    _emit(out, "done", bytes=received, resumed_from=start, already=False)
    return 0


def send(image: Path, to: tuple[str, int], secret: str, out: Callable[[dict], None],
         timeout: float = 600) -> int:
    """The sending end: connect, learn where the receiver's copy ends, send the rest."""
    size = image.stat().st_size
    enc = _zstd().ZstdCompressor(level=3)
    with socket.create_connection(to, timeout=timeout) as conn, open(image, "rb") as f:
        conn.sendall(MAGIC + secret.encode()[:64].ljust(64, b"\0"))
        (start,) = struct.unpack(">Q", _recv_exact(conn, 8))
        if start > size:
            raise SyncError(f"the receiver's copy ({start} bytes) is longer than the image")
        wire = 0
        last = time.monotonic()
        for off, length, data in _chunks(f, start, size):
            if data:
                z = enc.compress(data)
                conn.sendall(HEAD.pack(K_DATA, off, len(z)) + z)
                wire += len(z) + HEAD.size
            else:
                conn.sendall(HEAD.pack(K_ZERO, off, length))
                wire += HEAD.size
            if time.monotonic() - last >= 1:
                last = time.monotonic()
                _emit(out, "progress", offset=off + length, wire_bytes=wire)
        conn.sendall(HEAD.pack(K_END, size, 0))
        verdict = _recv_exact(conn, 3)
    if verdict != b"OK\n":
        raise SyncError("the receiver found the copy does not match the image's checksum")
    _emit(out, "done", bytes=wire, resumed_from=start, already=False)
    return 0


def print_event(event: dict) -> None:
    print(json.dumps(event), flush=True)


# --- the host side of `pcteleport images` (what the console runs on a site host) -----------


def _secret(secret_file: str) -> str:
    import sys

    text = sys.stdin.readline() if secret_file == "-" else Path(secret_file).read_text()
    secret = text.strip()
    if len(secret) < 16:
        raise SyncError("the copy's secret is missing or too short")
    return secret


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise SyncError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def main_scan(directory: str | None, paths: list[str], verify: bool) -> int:
    if paths:
        rows = []
        for p in map(Path, paths):
            rows += scan(p.parent, [p.name], verify=verify)
    else:
        rows = scan(Path(directory or "."), verify=verify)
    print_event({"images": [r.as_dict() for r in rows]})
    return 0


def _host_errors(fn: Callable[[], int]) -> int:
    import sys

    try:
        return fn()
    except (SyncError, OSError) as exc:
        print(f"pcteleport images: {exc}", file=sys.stderr, flush=True)
        return 1


def main_recv(directory: str, name: str, digest: str, size: int, listen: str,
              secret_file: str) -> int:
    return _host_errors(lambda: receive(Path(directory), name, digest, size, _addr(listen),
                                        _secret(secret_file), print_event))


def main_send(image: str, to: str, secret_file: str) -> int:
    return _host_errors(lambda: send(Path(image), _addr(to), _secret(secret_file),
                                     print_event))
