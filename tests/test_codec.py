"""The teleport codec on generated QEMU-format streams: round trips, savings, clear errors."""

from __future__ import annotations

import contextlib
import io
import os
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcteleport.errors import PcteleportError
from pcteleport.teleport import wan
from pcteleport.teleport.decoder import (
    DecodeError,
    Decoder,
    ReplicaMismatch,
    decode_all,
    iter_frames,
)
from pcteleport.teleport.disk import DiskImage
from pcteleport.teleport.encoder import Encoder, encode_all
from pcteleport.teleport.layout import RamLayout
from pcteleport.teleport.mapfile import MapError, RestorableMap, parse_binary, parse_text
from pcteleport.teleport.stream import (
    BytesReader,
    StreamError,
    UnsupportedStream,
)
from tests.streamgen import PAGE, StreamBuilder, build_stream

RAM_PAGES = 64
FIXTURE_OK = [HealthCheck.function_scoped_fixture]  # the disk fixture is read-only


def encode(stream: bytes, rmap: RestorableMap | None, disk: DiskImage | None, **kw) -> bytes:
    out = io.BytesIO()
    encode_all(BytesReader(stream, piece=kw.pop("piece", 1 << 20)), out.write, rmap, disk, **kw)
    return out.getvalue()


def decode(wire: bytes, disk: DiskImage | None, secret: bytes | None = None) -> bytes:
    out = io.BytesIO()
    reader = wan.FrameReader(io.BytesIO(wire).read, secret)
    decode_all(iter_frames(reader), disk, out.write)
    return out.getvalue()


@pytest.fixture
def disk(tmp_path):
    """A 256-block raw image of distinct random blocks."""
    rng = random.Random(1)
    path = tmp_path / "disk.raw"
    path.write_bytes(rng.randbytes(256 * PAGE))
    with DiskImage(path) as d:
        yield d


def disk_block(disk: DiskImage, n: int) -> bytes:
    block = disk.block(n * PAGE)
    assert block is not None
    return block


def scenario(disk: DiskImage):
    """Pages 0-19 cached from blocks 100-119; 20-24 mapped but dirty; 25-29 anonymous."""
    rng = random.Random(2)
    rnd = [("pc.ram", i * PAGE, disk_block(disk, 100 + i)) for i in range(20)]
    rnd += [("pc.ram", i * PAGE, rng.randbytes(PAGE)) for i in range(20, 30)]
    rnd += [("pc.ram", i * PAGE, None) for i in range(30, 40)]
    rnd += [("vga.vram", 0, rng.randbytes(PAGE))]
    stream = build_stream([rnd], blocks={"pc.ram": RAM_PAGES * PAGE, "vga.vram": 4 * PAGE})
    rmap = RestorableMap(extents=[(0, 100 * PAGE, 25 * PAGE)])
    return stream, rmap


def test_round_trip_teleports_only_matching_pages(disk):
    stream, rmap = scenario(disk)
    wire = encode(stream, rmap, disk)
    assert decode(wire, disk) == stream
    stats = wan.FrameReader(io.BytesIO(wire).read)
    end = next(f for f in iter_frames(stats) if f.type == wan.END).json()
    assert end["counters"]["pages_teleported"] == 20
    assert end["counters"]["pages_refused"] == 5  # mapped, but the page is not the block
    assert end["counters"]["pages_sent"] == 11
    assert end["counters"]["pages_zero"] == 10
    # 20 pages of random (incompressible) bytes never crossed the WAN.
    assert len(wire) < len(stream) - 19 * PAGE


def test_without_map_everything_is_sent_and_rebuilt(disk):
    stream, _ = scenario(disk)
    wire = encode(stream, None, None)
    assert decode(wire, None) == stream


def test_stream_split_in_small_reads_rebuilds_the_same(disk):
    stream, rmap = scenario(disk)
    wire = encode(stream, rmap, disk, piece=7)
    assert decode(wire, disk) == stream


def test_diverged_replica_never_yields_a_different_page(disk, tmp_path):
    stream, rmap = scenario(disk)
    wire = encode(stream, rmap, disk)
    replica = tmp_path / "replica.raw"
    data = bytearray(disk.path.read_bytes())
    data[105 * PAGE + 17] ^= 0xFF  # one byte of one teleported block differs
    replica.write_bytes(bytes(data))
    out = io.BytesIO()
    with DiskImage(replica) as rep, pytest.raises(ReplicaMismatch, match="re-sync"):
        decode_all(iter_frames(wan.FrameReader(io.BytesIO(wire).read)), rep, out.write)
    # Nothing past the bad page reached QEMU, so the destination cannot resume.
    assert len(out.getvalue()) < stream.index(disk_block(disk, 105))


def test_diverged_replica_fetches_page_over_back_channel(disk, tmp_path):
    stream, rmap = scenario(disk)
    frames: list[wan.Frame] = []
    writer = wan.FrameWriter(lambda b: frames.append(b))
    enc = Encoder(writer, rmap, disk)
    enc.hello()
    enc.run(BytesReader(stream))
    replica = tmp_path / "replica.raw"
    data = bytearray(disk.path.read_bytes())
    data[103 * PAGE] ^= 1
    replica.write_bytes(bytes(data))
    asked: list[int] = []

    def fetch(ids):
        asked.extend(ids)
        return {i: enc.kept_page(i) for i in ids}

    out = io.BytesIO()
    with DiskImage(replica) as rep:
        dec = Decoder(rep, fetch)
        for frame in iter_frames(wan.FrameReader(io.BytesIO(b"".join(frames)).read)):
            if frame.type == wan.HELLO:
                dec.on_hello(frame.json())
            elif frame.type == wan.DATA:
                for piece in dec.data(frame.payload):
                    out.write(piece)
            elif frame.type == wan.END:
                dec.end(frame.json())
    assert out.getvalue() == stream
    assert asked == [3]
    assert dec.counters.pages_fetched == 1


def test_reference_outside_replica_is_refused(disk, tmp_path):
    stream, rmap = scenario(disk)
    wire = encode(stream, rmap, disk)
    small = tmp_path / "small.raw"
    small.write_bytes(disk.path.read_bytes()[: 50 * PAGE])
    with DiskImage(small) as rep, pytest.raises(DecodeError, match="re-sync the replica"):
        decode(wire, rep)


def test_secret_authenticates_frames(disk):
    stream, rmap = scenario(disk)
    wire = encode(stream, rmap, disk, secret=b"k" * 32)
    assert decode(wire, disk, secret=b"k" * 32) == stream
    with pytest.raises(wan.WanError, match="wrong migration secret"):
        decode(wire, disk, secret=b"x" * 32)


def test_corrupted_frame_is_caught(disk):
    stream, rmap = scenario(disk)
    wire = bytearray(encode(stream, rmap, disk))
    wire[len(wire) // 2] ^= 0x40
    with pytest.raises(wan.WanError, match="checksum"):
        decode(bytes(wire), disk)


def _frames(wire: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(wire):
        length = struct.unpack_from(">I", wire, pos + 4)[0]
        end = pos + wan.HEADER.size + length + wan.TAG_SIZE
        out.append(wire[pos:end])
        pos = end
    return out


def test_gap_in_sequence_numbers_is_caught(disk):
    stream, rmap = scenario(disk)
    frames = _frames(encode(stream, rmap, disk))
    assert len(frames) >= 3
    with pytest.raises(wan.WanError, match="gap in WAN sequence"):
        decode(b"".join(frames[:1] + frames[2:]), disk)


def test_truncated_wan_stream_is_caught(disk):
    stream, rmap = scenario(disk)
    wire = encode(stream, rmap, disk)
    with pytest.raises(wan.WanError, match="truncated"):
        decode(wire[:-5], disk)
    frames = _frames(wire)
    with pytest.raises(DecodeError, match="before the source's END"):
        decode(b"".join(frames[:-1]), disk)


def test_truncated_qemu_stream_is_caught(disk):
    stream, rmap = scenario(disk)
    cut = stream[: stream.index(b"\x04\x00\x00\x00\x03")]  # before device state
    with pytest.raises(StreamError, match=r"ended at byte|truncated"):
        encode(cut[:-3], rmap, disk)


@pytest.mark.parametrize(
    ("flags", "capability"), [(0x40, "xbzrle"), (0x100, "compress"), (0x80, "rdma")]
)
def test_unsupported_ram_capability_is_named(flags, capability):
    sb = StreamBuilder()
    record = struct.pack(">Q", flags) + b"\x06pc.ram" + b"\x00" * PAGE
    stream = sb.header() + sb.start() + b"\x02" + struct.pack(">I", 2) + record
    with pytest.raises(UnsupportedStream, match=capability):
        encode(stream, None, None)


def test_postcopy_is_refused_at_the_start():
    sb = StreamBuilder()
    stream = sb.header() + b"\x08" + struct.pack(">HH", 3, 16) + b"\x00" * 16 + sb.start()
    with pytest.raises(UnsupportedStream, match="postcopy"):
        encode(stream, None, None)


def test_multifd_channel_is_refused():
    with pytest.raises(UnsupportedStream, match="multifd"):
        encode(struct.pack(">II", 0x11223344, 1) + b"\x00" * 64, None, None)


def test_not_a_qemu_stream():
    with pytest.raises(StreamError, match="not a QEMU migration stream"):
        encode(b"hello world, not qemu", None, None)


def test_qcow2_disk_is_refused_with_advice(tmp_path):
    path = tmp_path / "d.qcow2"
    path.write_bytes(b"QFI\xfb" + b"\x00" * 1000)
    with pytest.raises(PcteleportError, match="qemu-img convert"):
        DiskImage(path)


# -- maps and layout --------------------------------------------------------------------------


def test_map_text_round_trip_and_metadata():
    text = "# disk: serial=data0 dev=254:16\n0x1000 0x8000 8192  # two pages\n\n4096 0 4096\n"
    m = parse_text(text)
    assert m.meta == {"disk": "serial=data0 dev=254:16"}
    assert m.extents == [(0x1000, 0x8000, 8192), (4096, 0, 4096)]
    assert parse_text(m.to_text()).extents == m.extents
    assert parse_binary(m.to_binary()).extents == m.extents


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("0x1000 0x8000", "expected"),
        ("0x1001 0 4096", "not 4 KiB aligned"),
        ("zz 0 4096", "not a number"),
        ("0 0 0", "length 0"),
    ],
)
def test_bad_map_lines_are_named(line, message):
    with pytest.raises(MapError, match=f"line 2: .*{message}"):
        parse_text("# ok\n" + line + "\n")


def test_layout_i440fx_and_q35_split_around_the_pci_hole():
    small = RamLayout.for_machine("pc-i440fx-7.2", 1 << 30)
    assert small.ram_offset(0x1234000) == 0x1234000
    assert small.ram_offset(1 << 30) is None
    big = RamLayout.for_machine("pc-i440fx-7.2", 6 << 30)
    assert big.below_4g == 3 << 30
    assert big.ram_offset(4 << 30) == 3 << 30
    assert big.ram_offset(0xD0000000) is None  # the PCI hole
    assert big.gpa(3 << 30) == 4 << 30
    q35 = RamLayout.for_machine("pc-q35-7.2", 3 << 30)
    assert q35.below_4g == 2 << 30
    assert q35.ram_offset((4 << 30) + 4096) == (2 << 30) + 4096
    assert RamLayout.for_machine("pc-q35-7.2", 2 << 30).below_4g == 2 << 30
    with pytest.raises(PcteleportError, match="unknown machine"):
        RamLayout.for_machine("virt-7.2", 1 << 30)


def test_map_above_4g_reaches_the_right_page(tmp_path):
    """A q35 guest with RAM above 4 GiB: the map's guest address is translated."""
    rng = random.Random(5)
    img = tmp_path / "d.raw"
    img.write_bytes(rng.randbytes(8 * PAGE))
    ram = 3 << 30  # q35: 2 GiB low, 1 GiB high
    with DiskImage(img) as d:
        page = disk_block(d, 3)
        stream = build_stream([[("pc.ram", (2 << 30) + 5 * PAGE, page)]],
                              machine="pc-q35-7.2", blocks={"pc.ram": ram})
        rmap = RestorableMap(extents=[((4 << 30) + 5 * PAGE, 3 * PAGE, PAGE)])
        wire = encode(stream, rmap, d)
        assert decode(wire, d) == stream
        assert len(wire) < len(stream) - PAGE // 2


# -- properties -------------------------------------------------------------------------------

page_choice = st.one_of(
    st.tuples(st.just("disk"), st.integers(0, 255)),
    st.tuples(st.just("rand"), st.integers(0, 2**32)),
    st.tuples(st.just("zero"), st.just(0)),
)
records = st.lists(
    st.tuples(st.sampled_from(["pc.ram", "pc.ram", "vga.vram"]), st.integers(0, 3), page_choice),
    max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURE_OK)
@given(
    rounds=st.lists(records, min_size=0, max_size=4),
    extents=st.lists(
        st.tuples(st.integers(0, RAM_PAGES - 1), st.integers(0, 255), st.integers(1, 8)),
        max_size=6,
    ),
    piece=st.sampled_from([1, 13, 4096, 1 << 20]),
)
def test_decode_encode_is_identity_for_any_stream_and_map(disk, rounds, extents, piece):
    built = []
    for rnd in rounds:
        recs = []
        for block, slot, (kind, n) in rnd:
            offset = (slot * 7 % (RAM_PAGES if block == "pc.ram" else 4)) * PAGE
            if kind == "disk":
                recs.append((block, offset, disk_block(disk, n)))
            elif kind == "rand":
                recs.append((block, offset, random.Random(n).randbytes(PAGE)))
            else:
                recs.append((block, offset, None))
        built.append(recs)
    stream = build_stream(built, blocks={"pc.ram": RAM_PAGES * PAGE, "vga.vram": 4 * PAGE})
    rmap = RestorableMap(
        extents=[(g * PAGE, d * PAGE, min(n, 256 - d) * PAGE) for g, d, n in extents]
    )
    wire = encode(stream, rmap, disk, piece=piece)
    assert decode(wire, disk) == stream


@settings(max_examples=150, deadline=None, suppress_health_check=FIXTURE_OK)
@given(data=st.data())
def test_fuzzed_wan_input_fails_only_with_clear_errors(disk, data):
    stream, rmap = scenario(disk)
    wire = bytearray(encode(stream, rmap, disk))
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(wire) - 1))
        wire[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(wire)))
    with contextlib.suppress(PcteleportError):
        decode(bytes(wire[:cut]), disk)


@settings(max_examples=100, deadline=None)
@given(blob=st.binary(max_size=600))
def test_random_bytes_after_a_valid_header_fail_clearly(blob):
    sb = StreamBuilder()
    with contextlib.suppress(PcteleportError):
        encode(sb.header() + sb.start() + blob, None, None)


def test_urandom_wan_frames_fail_clearly():
    for _ in range(50):
        with pytest.raises(PcteleportError):
            decode(os.urandom(100), None)


@settings(max_examples=150, deadline=None, suppress_health_check=FIXTURE_OK)
@given(payloads=st.lists(st.binary(max_size=200), max_size=4), compressed=st.booleans())
def test_authentic_but_malformed_data_frames_fail_clearly(disk, payloads, compressed):
    """Frames whose checksums are right but whose contents are nonsense (a buggy peer)."""
    import zstandard

    out = io.BytesIO()
    w = wan.FrameWriter(out.write)
    w.send_json(wan.HELLO, {"role": "encoder", "hash": "xxh3-128", "map_pages": 1,
                            "disk_size": disk.size})
    for p in payloads:
        body = zstandard.ZstdCompressor().compress(p) if compressed else p
        w.send(wan.DATA, bytes([1 if compressed else 0]) + body)
    with contextlib.suppress(PcteleportError):
        decode(out.getvalue(), disk)


def test_end_frame_names_the_vm_description_tail(disk):
    stream, rmap = scenario(disk)
    wire = encode(stream, rmap, disk)
    end = next(f for f in iter_frames(wan.FrameReader(io.BytesIO(wire).read))
               if f.type == wan.END).json()
    desc = b'{"page_size":4096,"devices":[]}'
    assert end["optional_tail"] == 1 + 4 + len(desc)
    assert stream.endswith(b"\x00\x06" + struct.pack(">I", len(desc)) + desc)


# --- bad input found by issue 16's probe: each ends in our one-line error, never a hang ------


def _renumbered(frames: list[bytes], extra: bytes) -> bytes:
    """`extra` (a frame) appended with the next sequence number and a valid checksum."""
    writer_out = io.BytesIO()
    w = wan.FrameWriter(writer_out.write)
    w.seq = len(frames)
    header = wan.HEADER.unpack_from(extra)
    payload = extra[wan.HEADER.size:wan.HEADER.size + header[3]]
    w.send(header[2], payload)
    return b"".join(frames) + writer_out.getvalue()


def test_a_frame_after_end_is_refused(disk):
    stream, rmap = scenario(disk)
    frames = _frames(encode(stream, rmap, disk))
    data = next(f for f in frames if wan.HEADER.unpack_from(f)[2] == wan.DATA)
    with pytest.raises(PcteleportError, match="a DATA frame after the source's END"):
        decode(_renumbered(frames, data), disk)
    with pytest.raises(PcteleportError, match="a HELLO frame after the source's END"):
        decode(_renumbered(frames, frames[0]), disk)


def test_deeply_nested_json_is_our_error_not_a_recursion_error():
    frame = wan.Frame(wan.HELLO, 0, b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(wan.WanError, match="holds no valid JSON"):
        frame.json()


def test_a_huge_map_extent_is_clipped_to_the_guest_ram():
    layout = RamLayout.for_machine("pc-i440fx-10.0", 64 * PAGE)
    for length in (1 << 44, 1 << 62):
        rmap = RestorableMap(extents=[(0, 0, length)])
        table = rmap.page_table(layout)  # returns at once: at most one entry per RAM page
        assert len(table) == 64 and table[63 * PAGE] == 63 * PAGE


def test_a_fifo_as_disk_or_map_is_refused_at_once(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(PcteleportError, match="is not a file or a block device"):
        DiskImage(fifo)
    with pytest.raises(MapError, match="is not a regular file"):
        from pcteleport.teleport.mapfile import load

        load(fifo)
    with pytest.raises(PcteleportError, match="is not a file or a block device"):
        DiskImage(tmp_path)  # a directory: was a traceback


def test_stats_of_a_crafted_data_frame_is_one_line(tmp_path):
    from pcteleport.teleport.offline import wan_stream_stats

    for payload in (b"", b"\x01\x28\xb5\x2f\xfdgarbage", b"\x00\x01"):
        out = io.BytesIO()
        w = wan.FrameWriter(out.write)
        w.send(wan.DATA, payload)
        with pytest.raises(PcteleportError, match="DATA frame 0 is malformed"):
            wan_stream_stats(io.BytesIO(out.getvalue()))


def test_a_failed_decode_leaves_no_output_file(disk, tmp_path):
    from pcteleport.teleport.offline import decode_file

    stream, rmap = scenario(disk)
    (tmp_path / "bad.wan").write_bytes(encode(stream, rmap, disk)[:-5])
    out = tmp_path / "out.qemu"
    with pytest.raises(PcteleportError, match="truncated"):
        decode_file(str(disk.path), str(tmp_path / "bad.wan"), str(out))
    assert not out.exists() and not (tmp_path / "out.qemu.part").exists()
    (tmp_path / "good.wan").write_bytes(encode(stream, rmap, disk))
    assert decode_file(str(disk.path), str(tmp_path / "good.wan"), str(out)) == 0
    assert out.read_bytes() == stream


class _RefreshingReader(BytesReader):
    """Hands `refresh` to the encoder once the stream reached `at` bytes (between rounds)."""

    def __init__(self, data: bytes, at: int, encoder: Encoder, refresh: RestorableMap) -> None:
        super().__init__(data, piece=4096)
        self.at, self.encoder, self.refresh, self.sent = at, encoder, refresh, False

    def read_some(self, n: int) -> bytes:
        if not self.sent and self._pos >= self.at:
            self.encoder.add_map(self.refresh)
            self.sent = True
        return super().read_some(min(n, max(1, self.at - self._pos)) if not self.sent else n)


def test_a_map_refresh_teleports_pages_cached_after_the_first_map(disk):
    """Issue 14: pages 10-19 were cached after the map was taken, so the first pass sends them
    whole; a refresh names them, and when QEMU sends them again (dirtied, same bytes) they are
    teleported and counted as teleported after a refresh. The stream still round-trips."""
    cached = [("pc.ram", i * PAGE, disk_block(disk, 100 + i)) for i in range(20)]
    first = build_stream([cached], blocks={"pc.ram": RAM_PAGES * PAGE})
    stream = build_stream([cached, cached[10:]], blocks={"pc.ram": RAM_PAGES * PAGE})
    at = first.index(b"device-state") - 40  # inside round one's end: before round two
    out = io.BytesIO()
    enc = Encoder(wan.FrameWriter(out.write), RestorableMap(extents=[(0, 100 * PAGE, 10 * PAGE)]),
                  disk)
    enc.hello()
    counters = enc.run(_RefreshingReader(
        stream, at, enc, RestorableMap(extents=[(10 * PAGE, 110 * PAGE, 10 * PAGE)])))
    assert counters.pages_teleported == 20  # 0-9 in round one, 10-19 in round two
    assert counters.pages_teleported_later == 10
    assert counters.pages_sent == 10  # 10-19 in round one, before the refresh
    assert decode(out.getvalue(), disk) == stream


def test_a_refresh_naming_other_bytes_sends_the_page():
    """A refresh is checked like the first map: a page whose bytes are not the block's is sent."""
    rng = random.Random(5)
    data = rng.randbytes(8 * PAGE)
    import tempfile

    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        with DiskImage(f.name) as d:
            page = rng.randbytes(PAGE)  # not any block of the disk
            stream = build_stream([[("pc.ram", 0, page)]], blocks={"pc.ram": RAM_PAGES * PAGE})
            out = io.BytesIO()
            enc = Encoder(wan.FrameWriter(out.write), RestorableMap(), d)
            enc.add_map(RestorableMap(extents=[(0, 0, PAGE)]))
            enc.hello()
            counters = enc.run(BytesReader(stream))
            assert counters.pages_refused == 1 and counters.pages_teleported == 0
            assert decode(out.getvalue(), d) == stream


def test_map_updates_are_framed_and_errors_name_the_byte():
    from pcteleport.teleport.mapfile import frame_update, read_updates

    a = RestorableMap(extents=[(0, 0, PAGE)]).to_text().encode()
    b = RestorableMap(extents=[(PAGE, 8 * PAGE, 2 * PAGE)]).to_binary()
    maps = list(read_updates(io.BytesIO(frame_update(a) + frame_update(b))))
    assert [m.extents for m in maps] == [[(0, 0, PAGE)], [(PAGE, 8 * PAGE, 2 * PAGE)]]
    with pytest.raises(MapError, match=r"byte 0: expected 'MAP <length>'"):
        list(read_updates(io.BytesIO(b"0x0 0x0 4096\n")))
    cut = frame_update(a) + frame_update(b)[:-5]
    where = len(frame_update(a)) + len(b"MAP %d\n" % len(b))  # where the cut map begins
    with pytest.raises(MapError, match=rf"byte {where}: the map announced"):
        list(read_updates(io.BytesIO(cut)))
