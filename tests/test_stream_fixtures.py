"""The versions operators run (README "Supported versions"): migration streams captured from
QEMU 7.2, 8.2 and 10.0 on i440fx and q35 machine types (tests/fixtures/streams/, one manifest
and one .qemu.zst each; tests/stream_fixtures.py says how they were taken) parse whole, and
`pcteleport codec encode` then `codec decode` give every byte back, without a map and with
pages teleported from a disk image on both sides of the PCI hole.

Every fixture found in the directory is run: one dropped in later (another QEMU) is tested
without a change here. What each check compares with comes from QEMU, not from our parser:
the RAM blocks from `info ramblock`, the split of pc.ram from `info mtree`, the page counts
from `query-migrate`, the bytes from the sha256 taken at capture.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import stream_fixtures
import zstandard
from conftest import require
from stream_fixtures import Fixture

from pcteleport.teleport.layout import RamLayout
from pcteleport.teleport.mapfile import RestorableMap
from pcteleport.teleport.stream import (
    PAGE,
    ZERO,
    ByteSource,
    BytesReader,
    StreamError,
    StreamParser,
)

ROOT = Path(__file__).resolve().parent.parent
PAGE_SIZE = 4096
FOUR_GIB = 4 << 30

#: QEMU versions the README declares supported (major.minor)
SUPPORTED = ("7.2", "8.2", "10.0")
#: supported, but no fixture could be captured yet, and why (a fixture dropped in for one of
#: these fails test_the_matrix_has_its_fixtures until it is struck from here)
NOT_CAPTURED: dict[str, str] = {}
FIXTURES = stream_fixtures.fixtures()


def by_name(fixtures: list[Fixture]) -> list:
    return [pytest.param(f, id=f.name) for f in fixtures]


@functools.cache
def stream_of(name: str) -> bytes:
    return next(f for f in FIXTURES if f.name == name).stream()


# --- what a stream holds, checked against what QEMU said ----------------------------------------


@dataclass
class Parsed:
    machine: str
    ram_blocks: dict[str, int]
    pages: int = 0
    zero: int = 0
    #: pc.ram PAGE records in stream order: (offset in pc.ram, page bytes)
    ram_pages: list[tuple[int, bytes]] = field(default_factory=list)


def parse_and_check(data: bytes, manifest: dict) -> Parsed:
    """Parse the whole stream and hold it against the manifest; AssertionError or StreamError
    on the first difference."""
    parser = StreamParser(ByteSource(BytesReader(data)))
    rebuilt = []
    parsed = Parsed("", {})
    for chunk in parser.chunks():
        rebuilt.append(chunk.raw)
        if chunk.kind == PAGE:
            rebuilt.append(chunk.page)
            parsed.pages += 1
            if chunk.block == "pc.ram":
                parsed.ram_pages.append((chunk.offset, chunk.page))
        elif chunk.kind == ZERO:
            parsed.zero += 1
    info = parser.info
    parsed.machine, parsed.ram_blocks = info.machine, dict(info.ram_blocks)
    # the parser's invariant: its chunks are the stream, byte for byte, read to the end
    assert parser.src.offset == len(data)
    assert b"".join(rebuilt) == data
    assert info.machine == manifest["machine"]
    assert info.ram_blocks == manifest["ram_blocks"]
    assert info.ram_total == sum(manifest["ram_blocks"].values())
    assert info.ram_blocks["pc.ram"] == manifest["ram_mib"] << 20
    # every RAM record was seen as a page or a zero page, as QEMU counted them
    assert parsed.pages == manifest["query_migrate"]["normal"]
    assert parsed.zero == manifest["query_migrate"]["duplicate"]
    assert info.device_state_offset is not None
    assert info.optional_tail() > 100  # EOF, then QEMU's JSON VM description
    return parsed


def gpa_of(offset: int, manifest: dict) -> int:
    """Guest-physical address of a pc.ram offset, from QEMU's own memory map (not RamLayout)."""
    for alias in manifest["ram_split"].values():
        if alias["ram_offset"] <= offset < alias["ram_offset"] + alias["length"]:
            return alias["gpa"] + offset - alias["ram_offset"]
    raise AssertionError(f"pc.ram offset 0x{offset:x} is in no alias of the manifest")


@functools.cache
def parsed_of(name: str) -> Parsed:
    """The fixture parsed and checked once, for every test that needs its pages."""
    return parse_and_check(stream_of(name), next(f for f in FIXTURES if f.name == name).manifest)


# --- the codec through the real CLI -------------------------------------------------------------


def codec(*args: str) -> dict:
    """`pcteleport codec ARGS`; the JSON summary it writes on stderr."""
    out = subprocess.run([sys.executable, "-m", "pcteleport.cli", "codec", *args],
                         capture_output=True, text=True, timeout=300, cwd=ROOT,
                         stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stderr.strip().splitlines()[-1])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def round_trip_without_map(data: bytes, manifest: dict, tmp: Path) -> None:
    src, wire, back = tmp / "stream.qemu", tmp / "stream.wan", tmp / "back.qemu"
    src.write_bytes(data)
    (tmp / "empty.map").write_text("")
    (tmp / "empty.disk").write_bytes(b"")
    enc = codec("encode", "--map", str(tmp / "empty.map"), "--disk", str(tmp / "empty.disk"),
                str(src), str(wire))["encoded"]
    dec = codec("decode", "--disk", str(tmp / "empty.disk"), str(wire), str(back))["decoded"]
    assert sha256(back) == manifest["stream"]["sha256"]
    assert enc["pages_teleported"] == dec["pages_teleported"] == 0
    assert enc["pages_sent"] == manifest["query_migrate"]["normal"]
    assert enc["pages_zero"] == manifest["query_migrate"]["duplicate"]
    assert enc["guest_bytes"] == dec["guest_bytes"] == len(data)


def round_trip_with_teleport(data: bytes, manifest: dict, parsed: Parsed, tmp: Path) -> None:
    """A disk image holding every other non-zero pc.ram page of the stream (as the page was
    sent last), shuffled among random blocks, and a map pointing those guest pages at it."""
    last: dict[int, bytes] = {}
    for offset, page in parsed.ram_pages:
        last[offset] = page
    zero = bytes(PAGE_SIZE)
    candidates = sorted(o for o, p in last.items() if p != zero)
    below = manifest["ram_split"]["below_4g"]["length"]
    chosen = candidates[::2]
    high = [o for o in chosen if o >= below]
    assert high and len(high) < len(chosen), "the fixture holds pages on both sides of 4 GiB"

    rng = random.Random(manifest["stream"]["sha256"])
    slots = list(range(len(chosen) * 2))  # as many random blocks as teleportable ones
    rng.shuffle(slots)
    disk = bytearray(rng.randbytes(len(slots) * PAGE_SIZE))
    rmap = RestorableMap(meta={"disk": "fixture pages"})
    block_of = {}
    for offset, slot in zip(chosen, slots, strict=False):
        disk[slot * PAGE_SIZE:(slot + 1) * PAGE_SIZE] = last[offset]
        block_of[offset] = slot * PAGE_SIZE
        rmap.extents.append((gpa_of(offset, manifest), slot * PAGE_SIZE, PAGE_SIZE))
    # what the encoder must do: teleport each record whose bytes are the disk block's, refuse
    # the others (the page was sent before the guest rewrote it)
    teleported = sum(1 for o, p in parsed.ram_pages if o in block_of and p == last[o])
    refused = sum(1 for o, p in parsed.ram_pages if o in block_of and p != last[o])
    assert teleported >= len(chosen)

    src, wire, back = tmp / "stream.qemu", tmp / "stream.wan", tmp / "back.qemu"
    src.write_bytes(data)
    (tmp / "disk.raw").write_bytes(bytes(disk))
    replica = tmp / "replica.raw"
    shutil.copyfile(tmp / "disk.raw", replica)
    (tmp / "map.txt").write_text(rmap.to_text())
    enc = codec("encode", "--map", str(tmp / "map.txt"), "--disk", str(tmp / "disk.raw"),
                str(src), str(wire))["encoded"]
    assert enc["pages_teleported"] == teleported
    assert enc["pages_refused"] == refused
    assert enc["pages_sent"] == manifest["query_migrate"]["normal"] - teleported
    out = subprocess.run([sys.executable, "-m", "pcteleport.cli", "codec", "stats", "--json",
                          str(wire)], capture_output=True, text=True, cwd=ROOT, check=True)
    stats = json.loads(out.stdout)
    assert stats["complete"] and stats["references"] == teleported
    # the teleported pages did not cross: every other byte of the stream did, once
    assert stats["literal_bytes"] == len(data) - teleported * PAGE_SIZE
    dec = codec("decode", "--disk", str(replica), str(wire), str(back))["decoded"]
    assert dec["pages_teleported"] == teleported
    assert sha256(back) == manifest["stream"]["sha256"]


# --- the fixtures -------------------------------------------------------------------------------


def test_the_matrix_has_its_fixtures() -> None:
    """Both machine families on every supported version that could be captured, QEMU 10
    with today's and with 7.2's machine types; nothing from an undeclared version."""
    have = {(f.qemu_version, f.machine) for f in FIXTURES}
    for version in SUPPORTED:
        captured = {m for v, m in have if v == version}
        if version in NOT_CAPTURED:
            assert not captured, f"QEMU {version} has fixtures now: strike it from NOT_CAPTURED"
            continue
        assert any("i440fx" in m for m in captured), f"no i440fx fixture of QEMU {version}"
        assert any("q35" in m for m in captured), f"no q35 fixture of QEMU {version}"
    assert {"pc-i440fx-10.0", "pc-q35-10.0", "pc-i440fx-7.2", "pc-q35-7.2"} <= {
        m for v, m in have if v == "10.0"}
    assert {v for v, _ in have} <= set(SUPPORTED)
    for f in FIXTURES:
        assert f.path.exists(), f"{f.name}: {f.path.name} is missing"
        assert f.manifest["name"] == f.name


@pytest.mark.parametrize("fixture", by_name(FIXTURES))
def test_every_fixture_says_where_its_qemu_came_from(fixture: Fixture) -> None:
    """A distribution's package names itself in QEMU's version; a QEMU built by hand (8.2:
    no registry here has it) reports none, so its manifest must say what it was built from."""
    qemu = fixture.manifest["qemu"]
    assert qemu["package"] or qemu.get("source"), f"{fixture.name}: no package, no source"


@pytest.mark.parametrize("fixture", by_name(FIXTURES))
def test_the_parser_reads_the_whole_fixture(fixture: Fixture) -> None:
    manifest = fixture.manifest
    parsed_of(fixture.name)
    # the split of pc.ram around the PCI hole that teleport assumes is the one QEMU made
    layout = RamLayout.for_machine(fixture.machine, manifest["ram_blocks"]["pc.ram"])
    split = manifest["ram_split"]
    assert layout.below_4g == split["below_4g"]["length"]
    assert split["above_4g"]["gpa"] == FOUR_GIB
    assert layout.gpa(split["above_4g"]["ram_offset"]) == FOUR_GIB
    assert layout.gpa_end() == FOUR_GIB + split["above_4g"]["length"]


@pytest.mark.parametrize("fixture", by_name(FIXTURES))
def test_codec_round_trip_without_a_map(fixture: Fixture, tmp_path: Path) -> None:
    round_trip_without_map(stream_of(fixture.name), fixture.manifest, tmp_path)


@pytest.mark.parametrize("fixture", by_name(FIXTURES))
def test_codec_round_trip_with_teleported_pages(fixture: Fixture, tmp_path: Path) -> None:
    round_trip_with_teleport(stream_of(fixture.name), fixture.manifest, parsed_of(fixture.name),
                             tmp_path)


# --- the checks can fail ------------------------------------------------------------------------


def some_fixture() -> Fixture:
    return next(f for f in FIXTURES if f.machine == "pc-q35-10.0")


def flipped(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0x01
    return bytes(out)


def landmarks(data: bytes) -> dict[str, int]:
    """Where in the stream: the first RAM record that names its block, the first footer."""
    found: dict[str, int] = {}
    pos = 0
    for chunk in StreamParser(ByteSource(BytesReader(data))).chunks():
        if chunk.kind in (PAGE, ZERO) and chunk.raw[8:9] == bytes([len(chunk.block)]):
            found.setdefault("record", pos)
        elif chunk.kind != PAGE and len(chunk.raw) == 5 and chunk.raw[0] == 0x7E:
            found.setdefault("footer", pos)
        pos += len(chunk.raw) + len(chunk.page)
    return found


def test_a_flipped_byte_in_a_fixture_file_is_caught(tmp_path: Path) -> None:
    """A fixture whose bytes changed since capture fails on its manifest's sha256, even where
    the stream still parses (a byte inside a page)."""
    fixture = some_fixture()
    data = stream_of(fixture.name)
    at = data.index(b"pcteleport fixture: file page")
    parse_and_check(flipped(data, at), fixture.manifest)  # a page's bytes: still a stream
    packed = zstandard.ZstdCompressor().compress(flipped(data, at))
    (tmp_path / fixture.path.name).write_bytes(packed)
    (tmp_path / f"{fixture.name}.json").write_text(json.dumps(fixture.manifest))
    [copy] = stream_fixtures.fixtures(tmp_path)
    with pytest.raises(AssertionError, match="sha256"):
        copy.stream()


def test_a_flipped_byte_in_the_structure_is_caught() -> None:
    fixture = some_fixture()
    data = stream_of(fixture.name)
    machine = data.index(fixture.machine.encode())
    with pytest.raises(AssertionError):
        parse_and_check(flipped(data, machine + len(fixture.machine) - 1), fixture.manifest)
    where = landmarks(data)
    # the first RAM record: ZERO or PAGE; flipped, its flags say FULL too (a pre-1.0 record)
    with pytest.raises(StreamError, match="full-page"):
        parse_and_check(flipped(data, where["record"] + 7), fixture.manifest)
    # the footer marker of the first RAM section
    with pytest.raises(StreamError, match="footer"):
        parse_and_check(flipped(data, where["footer"]), fixture.manifest)


def test_the_round_trip_compares_every_byte(tmp_path: Path) -> None:
    """A stream that differs from the fixture in one byte of device state (carried verbatim)
    still round-trips, to itself: the sha256 the round trip checks is not the fixture's."""
    fixture = some_fixture()
    data = stream_of(fixture.name)
    at = len(data) - 10  # inside the trailing JSON VM description
    with pytest.raises(AssertionError, match=fixture.manifest["stream"]["sha256"]):
        round_trip_without_map(flipped(data, at), fixture.manifest, tmp_path)


# --- a fresh capture on the installed QEMU ------------------------------------------------------


@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.parametrize("machine", ["pc", "q35"])
def test_a_fresh_capture_on_the_installed_qemu_round_trips(machine: str, tmp_path: Path) -> None:
    """The fixture guest on the installed QEMU's newest i440fx and q35 machine types, captured
    now: a QEMU update that changes the stream is caught here before an operator meets it."""
    require(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86_64 is not installed")
    require(shutil.which("gcc") is not None, "gcc is not installed")
    qemu = shutil.which("qemu-system-x86_64")
    data, manifest = stream_fixtures.capture(qemu, machine, tmp_path / "capture")
    assert manifest["machine"].startswith("pc-q35-" if machine == "q35" else "pc-i440fx-")
    assert hashlib.sha256(data).hexdigest() == manifest["stream"]["sha256"]
    parsed = parse_and_check(data, manifest)
    layout = RamLayout.for_machine(manifest["machine"], manifest["ram_blocks"]["pc.ram"])
    assert layout.below_4g == manifest["ram_split"]["below_4g"]["length"]
    (tmp_path / "plain").mkdir()
    round_trip_without_map(data, manifest, tmp_path / "plain")
    (tmp_path / "teleport").mkdir()
    round_trip_with_teleport(data, manifest, parsed, tmp_path / "teleport")
