"""`pcteleport codec encode | decode | stats`: the codec on files, for inspection and tests."""

from __future__ import annotations

import contextlib
import json
import os
import struct
import sys
from collections.abc import Iterator
from typing import BinaryIO

from pcteleport.errors import PcteleportError
from pcteleport.teleport import heap, mapfile, wan
from pcteleport.teleport.decoder import MAX_PLAIN, decode_all, iter_frames
from pcteleport.teleport.disk import DiskImage
from pcteleport.teleport.encoder import COUNT, PLAIN, REF, ZSTD, Encoder
from pcteleport.teleport.stream import (
    PAGE,
    ZERO,
    ByteSource,
    FileReader,
    StreamParser,
)


@contextlib.contextmanager
def _open(path: str, mode: str) -> Iterator[BinaryIO]:
    if path == "-":
        yield sys.stdin.buffer if "r" in mode else sys.stdout.buffer
        return
    try:
        f = open(path, mode)  # noqa: SIM115 - closed below
    except OSError as exc:
        raise PcteleportError(f"cannot open {path}: {exc.strerror}") from None
    with f:
        yield f


@contextlib.contextmanager
def _output(path: str) -> Iterator[BinaryIO]:
    """Where a result goes: written beside `path` and renamed into place only once whole, so
    a failed encode or decode leaves no partial file that looks like a stream."""
    if path == "-":
        yield sys.stdout.buffer
        return
    part = f"{path}.part"
    with _open(part, "wb") as f:
        try:
            yield f
        except BaseException:
            f.close()
            with contextlib.suppress(OSError):
                os.unlink(part)
            raise
    os.replace(part, path)


def _report(summary: dict) -> None:
    print(json.dumps(summary), file=sys.stderr)


def encode_file(map_path: str, disk_path: str, src: str, dst: str) -> int:
    heap.keep_freed_memory()
    rmap = mapfile.load(map_path)
    with DiskImage(disk_path) as disk, _open(src, "rb") as fin, _output(dst) as fout:
        writer = wan.FrameWriter(fout.write)
        enc = Encoder(writer, rmap, disk)
        enc.hello()
        counters = enc.run(FileReader(fin))
    _report({"encoded": counters.as_dict()})
    return 0


def decode_file(disk_path: str, src: str, dst: str) -> int:
    heap.keep_freed_memory()
    with DiskImage(disk_path) as disk, _open(src, "rb") as fin, _output(dst) as fout:
        reader = wan.FrameReader(wan.file_read_exact(fin))
        counters = decode_all(iter_frames(reader), disk, fout.write)
        counters.wan_bytes = reader.bytes_in
    _report({"decoded": counters.as_dict()})
    return 0


def qemu_stream_stats(f: BinaryIO) -> dict:
    parser = StreamParser(ByteSource(FileReader(f)))
    pages = zero = 0
    per_block: dict[str, int] = {}
    for chunk in parser.chunks():
        if chunk.kind == PAGE:
            pages += 1
            per_block[chunk.block] = per_block.get(chunk.block, 0) + 1
        elif chunk.kind == ZERO:
            zero += 1
    info = parser.info
    total = parser.src.offset
    device = total - info.device_state_offset if info.device_state_offset is not None else 0
    return {
        "format": "qemu",
        "bytes": total,
        "machine": info.machine,
        "ram_blocks": info.ram_blocks,
        "pages": pages,
        "zero_pages": zero,
        "pages_per_block": per_block,
        "return_path": info.return_path,
        "commands": info.commands,
        "device_state_bytes": device,
        "vm_description_bytes": info.optional_tail(),
    }


def wan_stream_stats(f: BinaryIO) -> dict:
    import zstandard

    reader = wan.FrameReader(wan.file_read_exact(f))
    frames: dict[str, int] = {}
    refs = 0
    literal_bytes = 0
    end: dict = {}
    for frame in iter_frames(reader):
        name = wan.NAMES.get(frame.type, str(frame.type))
        frames[name] = frames.get(name, 0) + 1
        if end:
            raise PcteleportError(f"frame {frame.seq} ({name}) comes after the END frame: "
                                  "the stream was extended after it finished")
        if frame.type == wan.DATA:
            try:
                kind, body = frame.payload[0], frame.payload[1:]
                if kind not in (ZSTD, PLAIN):
                    raise PcteleportError(f"unknown data frame encoding {kind}")
                plain = (zstandard.ZstdDecompressor().decompress(body, max_output_size=MAX_PLAIN)
                         if kind == ZSTD else body)
                (n,) = COUNT.unpack_from(plain)
            except (IndexError, struct.error, zstandard.ZstdError) as exc:
                raise PcteleportError(f"DATA frame {frame.seq} is malformed ({exc or 'empty'})"
                                      ) from None
            if COUNT.size + n * REF.size > len(plain):
                raise PcteleportError(f"DATA frame {frame.seq} announces {n} references but is "
                                      "too short")
            refs += n
            literal_bytes += len(plain) - COUNT.size - n * REF.size
        elif frame.type == wan.END:
            end = frame.json()
    return {
        "format": "pcteleport-wan",
        "bytes": reader.bytes_in,
        "frames": frames,
        "references": refs,
        "literal_bytes": literal_bytes,
        "stream_bytes": end.get("stream_bytes"),
        "encoder": end.get("counters"),
        "complete": bool(end),
    }


def stats_file(path: str, as_json: bool = False) -> int:
    with _open(path, "rb") as f:
        head = f.peek(4)[:4] if hasattr(f, "peek") else b""
        stats = wan_stream_stats(f) if head[:2] == wan.MAGIC else qemu_stream_stats(f)
    if as_json:
        print(json.dumps(stats, indent=2))
    else:
        width = max(len(k) for k in stats)
        for key, value in stats.items():
            print(f"{key:<{width}}  {value}")
    return 0
