"""The parser's batched RAM records (StreamParser(runs=True), what the encoder reads): the same
stream, pages and errors as the record-by-record path, on built, mutated and captured streams;
and the encoder's counts from runs agree with the records the stream holds (issue 15)."""

from __future__ import annotations

import io
import random

import pytest
import stream_fixtures
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcteleport.errors import PcteleportError
from pcteleport.teleport.decoder import decode_all, iter_frames
from pcteleport.teleport.disk import DiskImage
from pcteleport.teleport.encoder import encode_all
from pcteleport.teleport.mapfile import RestorableMap
from pcteleport.teleport.stream import (
    PAGE,
    RUN,
    RUN_BYTES,
    ZERO,
    ByteSource,
    BytesReader,
    StreamParser,
)
from pcteleport.teleport.wan import FrameReader
from tests.streamgen import build_stream

PAGE_SIZE = 4096


def walk(data: bytes, runs: bool, piece: int = 1 << 20) -> tuple[bytes, list, int, int]:
    """(the stream the chunks rebuild, its PAGE records as (block, offset, page), its ZERO
    records, the RUN chunks seen)."""
    parser = StreamParser(ByteSource(BytesReader(data, piece=piece)), runs=runs)
    out: list[bytes] = []
    pages: list[tuple[str, int, bytes]] = []
    zero = n_runs = 0
    for chunk in parser.chunks():
        if chunk.kind == RUN:
            n_runs += 1
            raw = bytes(chunk.raw)
            out.append(raw)
            pages += [(chunk.block, off, raw[pos:pos + PAGE_SIZE]) for pos, off in chunk.pages]
            zero += chunk.zero
            assert len(raw) <= RUN_BYTES + 8 + PAGE_SIZE  # a run stops near its limit
            continue
        out.append(bytes(chunk.raw))
        if chunk.kind == PAGE:
            out.append(chunk.page)
            pages.append((chunk.block, chunk.offset, chunk.page))
        elif chunk.kind == ZERO:
            zero += 1
    return b"".join(out), pages, zero, n_runs


def outcome(data: bytes, runs: bool, piece: int) -> tuple:
    try:
        rebuilt, pages, zero, _ = walk(data, runs, piece)
    except PcteleportError as exc:
        return ("error", type(exc).__name__, str(exc))
    return ("ok", rebuilt, pages, zero)


# streams of two blocks, pages and zero pages, CONTINUE chains broken by block switches
records = st.lists(st.tuples(st.sampled_from(["pc.ram", "vga.vram"]), st.integers(0, 63),
                             st.booleans()), max_size=120)


@settings(max_examples=150, deadline=None)
@given(rounds=st.lists(records, min_size=1, max_size=3), piece=st.integers(1, 20000))
def test_runs_give_the_stream_and_pages_the_records_give(rounds, piece):
    rng = random.Random(len(rounds))
    stream = build_stream(
        [[(b, o * PAGE_SIZE, rng.randbytes(PAGE_SIZE) if full else None) for b, o, full in r]
         for r in rounds],
        blocks={"pc.ram": 64 * PAGE_SIZE, "vga.vram": 64 * PAGE_SIZE})
    by_record = walk(stream, runs=False, piece=piece)
    by_run = walk(stream, runs=True, piece=piece)
    assert by_record[0] == by_run[0] == stream
    assert by_record[1:3] == by_run[1:3]


def test_a_long_chain_of_records_comes_in_runs():
    recs = [("pc.ram", (i % 64) * PAGE_SIZE, None if i % 3 else bytes([i % 251]) * PAGE_SIZE)
            for i in range(600)]
    stream = build_stream([recs])
    rebuilt, pages, zero, n_runs = walk(stream, runs=True)
    assert rebuilt == stream
    assert len(pages) == 200 and zero == 400
    assert n_runs >= 2  # ~1 MiB of records: more than one run's worth


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), piece=st.integers(1, 9000))
def test_runs_fail_as_the_records_do_on_mutated_streams(data, piece):
    rng = random.Random(3)
    recs = [("pc.ram", i * PAGE_SIZE, rng.randbytes(PAGE_SIZE) if i % 2 else None)
            for i in range(24)]
    stream = bytearray(build_stream([recs, recs[:8]]))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(stream) - 1))
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if op == "flip":
            stream[at] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del stream[at:]
            if not stream:
                break
        else:
            stream[at:at] = data.draw(st.binary(min_size=1, max_size=9))
    assert outcome(bytes(stream), True, piece) == outcome(bytes(stream), False, piece)


@pytest.mark.parametrize("fixture", [pytest.param(f, id=f.name)
                                     for f in stream_fixtures.fixtures()])
def test_runs_read_the_captured_streams_as_the_records_do(fixture):
    data = fixture.stream()
    by_record = walk(data, runs=False)
    by_run = walk(data, runs=True)
    assert by_run[0] == data
    assert by_record[1:3] == by_run[1:3]
    assert by_run[3] > 0  # the captured streams' records do come in runs


def test_the_encoders_counts_match_the_records(tmp_path):
    """Pages teleported, refused (the disk differs), sent and zero, counted from runs, are
    the stream's records; and the decoder rebuilds it from the replica."""
    rng = random.Random(5)
    disk_bytes = bytearray(rng.randbytes(64 * PAGE_SIZE))
    disk_path = tmp_path / "disk.raw"
    disk_path.write_bytes(disk_bytes)
    recs = [("pc.ram", i * PAGE_SIZE, bytes(disk_bytes[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]))
            for i in range(40)]  # restorable
    recs += [("pc.ram", i * PAGE_SIZE, rng.randbytes(PAGE_SIZE)) for i in range(40, 50)]
    recs += [("pc.ram", i * PAGE_SIZE, None) for i in range(50, 60)]
    recs += [("vga.vram", 0, bytes(disk_bytes[:PAGE_SIZE]))]  # not pc.ram: never teleported
    stream = build_stream([recs, recs[30:45]],
                          blocks={"pc.ram": 64 * PAGE_SIZE, "vga.vram": 4 * PAGE_SIZE})
    # the map names pages 0-44; 40-44 hold other bytes than the disk: refused, sent whole
    rmap = RestorableMap(extents=[(0, 0, 45 * PAGE_SIZE)])
    with DiskImage(disk_path) as disk:
        wire = io.BytesIO()
        counters = encode_all(BytesReader(stream, piece=5000), wire.write, rmap, disk)
        back = io.BytesIO()
        decode_all(iter_frames(FrameReader(io.BytesIO(wire.getvalue()).read)), disk,
                   back.write)
    assert back.getvalue() == stream
    assert counters.pages_teleported == 40 + 15 - 5  # both passes' restorable pages
    assert counters.pages_refused == 5 + 5
    assert counters.pages_sent == (10 + 1) + 5 + 0  # other bytes, vga, the refused again
    assert counters.pages_zero == 10
    assert counters.guest_bytes == len(stream)


def test_the_codec_benchmark_on_a_small_stream(tmp_path):
    """`pcteleport bench codec`'s numbers on a built stream: the pages it counts, both framings
    measured, the targets named (rates are printed, never asserted)."""
    from pcteleport.bench import codec as codec_bench

    rng = random.Random(9)
    disk_path = tmp_path / "disk.raw"
    disk_path.write_bytes(rng.randbytes(32 * PAGE_SIZE))
    disk_bytes = disk_path.read_bytes()
    recs = [("pc.ram", i * PAGE_SIZE, disk_bytes[i * PAGE_SIZE:(i + 1) * PAGE_SIZE])
            for i in range(16)]
    recs += [("pc.ram", i * PAGE_SIZE, None) for i in range(16, 32)]
    stream_path, map_path = tmp_path / "stream.qemu", tmp_path / "map.txt"
    stream_path.write_bytes(build_stream([recs]))
    map_path.write_text(RestorableMap(extents=[(0, 0, 16 * PAGE_SIZE)]).to_text())
    bench = codec_bench.run(stream_path, disk_path, map_path, repeat=1)
    assert (bench.pages, bench.zero_pages, bench.teleported) == (16, 16, 16)
    assert bench.guest_memory_bytes == 32 * PAGE_SIZE
    assert bench.encode_aead_cpu_s > 0 and bench.decode_aead_cpu_s > 0
    text = codec_bench.report(bench, as_json=False)
    assert "encode (AES-256-GCM)" in text and "1000 MB/s target" in text
    assert "2000 MB/s" in text


# the map's page table, built a range at a time, is the page-by-page definition
aligned = st.integers(0, (6 << 30) // PAGE_SIZE).map(lambda n: n * PAGE_SIZE)
extent = st.tuples(aligned, aligned, st.integers(1, 4096).map(lambda n: n * PAGE_SIZE))


@settings(max_examples=200, deadline=None)
@given(machine=st.sampled_from(["pc-i440fx-10.0", "pc-q35-7.2"]),
       ram_pages=st.integers(1, (5 << 30) // PAGE_SIZE), extents=st.lists(extent, max_size=6),
       near_hole=st.booleans())
def test_the_page_table_is_the_page_by_page_one(machine, ram_pages, extents, near_hole):
    from pcteleport.teleport.layout import RamLayout

    layout = RamLayout.for_machine(machine, ram_pages * PAGE_SIZE)
    if near_hole:  # extents across the PCI hole and the end of RAM
        extents = [(max(0, layout.below_4g - PAGE_SIZE * (1 + i)), d, n) for i, (_, d, n) in
                   enumerate(extents)] + [(layout.gpa_end() - PAGE_SIZE, 0, 2 * PAGE_SIZE)]
    want: dict[int, int] = {}
    for gpa, disk, length in extents:
        for i in range(0, length, PAGE_SIZE):
            off = layout.ram_offset(gpa + i)
            if off is not None:
                want[off] = disk + i
    assert RestorableMap(extents=extents).page_table(layout) == want


@settings(max_examples=200, deadline=None)
@given(size=st.integers(0, 120_000), piece=st.integers(1, 70_000),
       reads=st.lists(st.integers(1, 9000), max_size=60))
def test_byte_source_reads_are_the_stream_whatever_the_pieces(size, piece, reads):
    """Records cut by a read's end are joined from a few bytes of the next piece (the rest of
    it becomes the buffer later): every read, window and offset is still the stream's."""
    data = random.Random(size).randbytes(size)
    src = ByteSource(BytesReader(data, piece=piece))
    pos = 0
    for i, n in enumerate(reads):
        if i % 3 == 2:  # now and then, take what is buffered in place, as runs do
            buf, at = src.window()
            step = min(len(buf) - at, n)
            assert buf[at:at + step] == data[pos:pos + step]
            src.skip_to(at + step)
            pos += step
        elif pos + n <= size:
            assert src.read(n) == data[pos:pos + n]
            pos += n
        else:
            with pytest.raises(PcteleportError):
                src.read(n)
            return
        assert src.offset == pos
    rest = b""
    while chunk := src.available():
        rest += chunk
    assert rest == data[pos:] and src.offset == size and src.at_eof()
