"""Disks as operators have them (issue 13), the parts that need no lab: the domain's disks and
their bases, how a migration decides to move each one, the libvirt flags and parameters it asks
for, the WAN split between disks and memory, and the image cache (checksums, sparse copies,
the resumable verified sync over TCP)."""

from __future__ import annotations

import os
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import libvirt
import pytest

from pcteleport import imagecache
from pcteleport.records import DiskCopy, MigrationSample, Phase
from pcteleport.sites import images
from pcteleport.sites.libvirt.migration import plan as plan_mod
from pcteleport.sites.libvirt.migration import stats, storage
from pcteleport.sites.libvirt.migration.plan import MigrationFailed
from pcteleport.sites.libvirt.site_runtime import domain_disks

XML = """<domain type='qemu'><name>web</name><devices>
  <disk type='file' device='disk'>
    <driver name='qemu' type='qcow2'/>
    <source file='/srv/vms/web/vda.qcow2'/>
    <backingStore type='file'><format type='raw'/>
      <source file='/srv/images/root.raw'/><backingStore/></backingStore>
    <target dev='vda' bus='virtio'/><serial>pctroot</serial>
  </disk>
  <disk type='file' device='disk'>
    <driver name='qemu' type='qcow2'/>
    <source file='/srv/vms/web/vdb.qcow2'/>
    <backingStore type='file'><format type='raw'/>
      <source file='/srv/images/web-data.raw'/><backingStore/></backingStore>
    <target dev='vdb' bus='virtio'/><serial>pctdata</serial>
  </disk>
  <disk type='file' device='disk'>
    <driver name='qemu' type='raw'/>
    <source file='/srv/replicas/ref.raw'/>
    <target dev='vdc' bus='virtio'/><serial>ref</serial><readonly/>
  </disk>
</devices></domain>"""


class Dom:
    def __init__(self, xml: str = XML) -> None:
        self.xml = xml

    def XMLDesc(self, flags: int = 0) -> str:
        return self.xml

    def blockInfo(self, target: str) -> list[int]:
        return [64 << 20, 1 << 20, 1 << 20]


def test_the_domains_disks_with_their_bases():
    vda, vdb, vdc = domain_disks(XML)
    assert (vdb.path, vdb.format, vdb.base, vdb.base_format) == (
        "/srv/vms/web/vdb.qcow2", "qcow2", "/srv/images/web-data.raw", "raw")
    assert vdb.writable and vdb.overlay == vdb.path
    # the map's offsets are read from the base under an overlay, from a raw replica itself
    assert vdb.image == "/srv/images/web-data.raw" and vdc.image == "/srv/replicas/ref.raw"
    assert not vdc.writable and vdc.overlay == "" and vdc.base == ""
    assert plan_mod.data_disk_of(Dom()) == vdb  # the first non-root disk with an image
    assert plan_mod.data_disk_of(Dom(), "/srv/replicas/ref.raw") == vdc
    moves = plan_mod.disk_moves([vda, vdb, vdc])
    # teleport reads from every disk whose raw image both sites hold: root, data, replica
    assert [(m.target, m.copy, m.teleport, m.serial) for m in moves] == [
        ("vda", DiskCopy.OVERLAY, True, "pctroot"), ("vdb", DiskCopy.OVERLAY, True, "pctdata"),
        ("vdc", DiskCopy.NONE, True, "ref")]
    p = SimpleNamespace(disks=moves, data_target="vdb")
    assert [d.target for d in plan_mod.teleport_sources(p)] == ["vdb", "vda", "vdc"]
    assert [plan_mod.raw_image(d) for d in plan_mod.teleport_sources(p)] == [
        "/srv/images/web-data.raw", "/srv/images/root.raw", "/srv/replicas/ref.raw"]


def make_plan(host_log: list | None = None, wan_addr: str = "10.77.0.2",
              auto_converge: bool = False):
    disks = domain_disks(XML)
    host = SimpleNamespace(check=lambda argv, timeout=60: (host_log.append(argv)
                                                            if host_log is not None else None)
                           or "")
    conn = SimpleNamespace(listAllDomains=lambda: [])
    site = lambda name, addr: SimpleNamespace(  # noqa: E731
        name=name, host=host, conn=lambda: conn, config=SimpleNamespace(wan_addr=addr))
    return SimpleNamespace(
        vm="web", src=site("tokyo", "10.77.0.1"), dst=site("osaka", wan_addr),
        disks=plan_mod.disk_moves(disks), data_disk="/srv/images/web-data.raw",
        data_serial="pctdata", data_target="vdb", auto_converge=auto_converge)


def bases(monkeypatch, **states: str) -> None:
    def compare(src, dst, paths):
        return {p: images.BaseCheck(p, states.get(Path(p).stem, "same"),
                                    f"base {Path(p).name} is {states.get(Path(p).stem)} at "
                                    "osaka") for p in paths}

    monkeypatch.setattr(images, "compare_bases", compare)


def test_bases_at_the_destination_move_only_the_overlays(monkeypatch):
    bases(monkeypatch)
    sent: list = []
    p = make_plan(sent)
    out = storage.Storage()
    storage.prepare(p, Dom(), lambda line: None, out)  # type: ignore[arg-type]
    assert out.flags == libvirt.VIR_MIGRATE_NON_SHARED_INC and not out.whole
    assert out.params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] == ["vda", "vdb"]
    assert out.params[libvirt.VIR_MIGRATE_PARAM_DISKS_URI] == "tcp://10.77.0.2"
    assert out.created == ["/srv/vms/web/vda.qcow2", "/srv/vms/web/vdb.qcow2"]
    (script,) = [argv[2] for argv in sent]
    assert ("qemu-img create -q -f qcow2 -b /srv/images/web-data.raw -F raw "
            f"/srv/vms/web/vdb.qcow2 {64 << 20}") in script
    assert [d.reason for d in p.disks] == ["", "", ""]
    assert p.data_disk == "/srv/images/web-data.raw"


def test_with_auto_converge_the_guests_disk_writes_wait_for_the_mirror(monkeypatch):
    """auto-converge is asked for so that the migration converges: the disks too (a guest
    writing them as fast as the WAN carries the mirror keeps them from ever being in sync)."""
    bases(monkeypatch)
    out, lines = storage.Storage(), []
    storage.prepare(make_plan([], auto_converge=True), Dom(), lines.append, out)  # type: ignore[arg-type]
    assert out.flags == (libvirt.VIR_MIGRATE_NON_SHARED_INC
                         | libvirt.VIR_MIGRATE_NON_SHARED_SYNCHRONOUS_WRITES)
    assert any("synchronous writes" in line for line in lines)


def test_a_base_missing_at_the_destination_turns_teleport_off_and_copies_whole(monkeypatch):
    bases(monkeypatch, **{"web-data": "missing"})
    sent: list = []
    p = make_plan(sent)
    out = storage.Storage()
    lines: list[str] = []
    storage.prepare(p, Dom(), lines.append, out)  # type: ignore[arg-type]
    vda, vdb, vdc = p.disks
    assert out.whole and out.flags == libvirt.VIR_MIGRATE_NON_SHARED_DISK
    assert vdb.copy is DiskCopy.WHOLE and not vdb.teleport
    assert vdb.reason == ("base web-data.raw is missing at osaka: teleport is off for vdb and "
                          "it is copied whole")
    assert vda.copy is DiskCopy.WHOLE and "copied whole with vdb" in vda.reason
    assert vdc.copy is DiskCopy.NONE and vdc.reason == ""
    assert p.data_disk == "" and p.data_serial == "pctdata"  # the guest still checks vdb
    assert "disk vdb: base web-data.raw is missing at osaka" in lines[1]
    assert "-b" not in sent[0][2]  # stand-alone images at the destination
    dest = ET.fromstring(storage.destination_xml(Dom(), p))  # type: ignore[arg-type]
    for disk in dest.iterfind("./devices/disk"):
        backing = disk.findall("backingStore")
        if disk.find("target").get("dev") in ("vda", "vdb"):
            assert len(backing) == 1 and len(backing[0]) == 0  # empty: no backing file
        else:
            assert backing == []


def test_no_wan_address_no_disk_copy(monkeypatch):
    bases(monkeypatch)
    with pytest.raises(MigrationFailed, match="site osaka has no wan_addr"):
        storage.prepare(make_plan(wan_addr=""), Dom(), lambda line: None,  # type: ignore
                        storage.Storage())


def test_compare_bases_by_checksum(monkeypatch):
    def scan(site, paths, verify=False, timeout=900):
        table = {"tokyo": {"a.raw": "1" * 64, "b.raw": "2" * 64, "c.raw": "3" * 64},
                 "osaka": {"a.raw": "1" * 64, "b.raw": "9" * 64}}[site.name]
        return [imagecache.ImageInfo(Path(p).name, 10, 10, table[Path(p).name], "file")
                for p in paths if Path(p).name in table]

    monkeypatch.setattr(images, "scan", scan)
    src, dst = SimpleNamespace(name="tokyo"), SimpleNamespace(name="osaka")
    got = images.compare_bases(src, dst, ["/i/a.raw", "/i/b.raw", "/i/c.raw"])  # type: ignore
    assert {p: c.state for p, c in got.items()} == {
        "/i/a.raw": "same", "/i/b.raw": "differs", "/i/c.raw": "missing"}
    assert got["/i/c.raw"].reason == ("base c.raw is missing at osaka (copy it once with "
                                      "`pcteleport images sync c.raw --to osaka`)")
    assert "differs from tokyo's (checksum 999999999999 against 222222222222" in \
        got["/i/b.raw"].reason


def test_wan_bytes_split_between_disks_and_memory():
    # teleport: the relay counted the memory stream on the WAN; the disks are the rest
    assert stats.split_wan(31_490_418, 128_057_922, 29_768_429) == (1_721_989, 29_768_429)
    # the others: libvirt counted the memory stream; its disk count is not a WAN count
    assert stats.split_wan(128_495_547, 126_778_473, None, 15_400_960) == (1_717_074,
                                                                           126_778_473)
    assert stats.split_wan(0, 100, None, 7) == (7, 100)  # no interface count
    assert stats.split_wan(50, 100, None) == (0, 50)  # never more than was sent


def test_progress_line_while_the_disks_are_copied():
    s = MigrationSample(t=1, phase=Phase.ITERATIVE, guest_rate_bytes_per_s=0,
                        wan_rate_bytes_per_s=2**20, remaining_bytes=0, total_bytes=0,
                        disk_processed_bytes=10 << 20, disk_total_bytes=40 << 20)
    assert stats.progress_line(s, None) == (
        "storage migration active, copied 10.0 MiB of 40.0 MiB of the disks' writable layers "
        "(WAN 1.0 MiB/s) [25%]")
    sample = stats.build_sample(1.0, Phase.ITERATIVE, {"disk_processed": 5, "disk_total": 9},
                                0.0)
    assert (sample.disk_processed_bytes, sample.disk_total_bytes) == (5, 9)


# --- the image cache ----------------------------------------------------------------------


def sparse_image(path: Path, size: int = 8 << 20) -> bytes:
    with open(path, "wb") as f:
        f.truncate(size)
        for off in (0, 3 << 20, size - 4096):
            f.seek(off)
            f.write(os.urandom(4096))
    return path.read_bytes()


def test_checksums_written_beside_and_stale_when_older(tmp_path):
    img = tmp_path / "a.raw"
    sparse_image(img)
    assert imagecache.read_checksum(img) == ("", "missing")
    (info,) = imagecache.scan(tmp_path)
    assert info.checksum == "computed" and info.sha256 == imagecache.sha256_file(img)
    assert imagecache.read_checksum(img) == (info.sha256, "file")
    text = imagecache.checksum_path(img).read_text()
    assert text == f"{info.sha256}  a.raw\n"  # sha256sum -c reads it
    later = imagecache.checksum_path(img).stat().st_mtime_ns + 10**9
    os.utime(img, ns=(later, later))  # the image changed after its checksum was taken
    assert imagecache.read_checksum(img) == ("", "stale")
    assert [i.name for i in imagecache.scan(tmp_path, compute=False)] == ["a.raw"]


def test_place_copies_sparse_and_once(tmp_path):
    src = tmp_path / "src.raw"
    data = sparse_image(src)
    digest = imagecache.sha256_file(src)
    dest = tmp_path / "site" / "images" / "x.raw"
    assert imagecache.place(src, dest, digest)
    assert dest.read_bytes() == data
    assert dest.stat().st_blocks * 512 < len(data) // 2  # the holes stayed holes
    assert imagecache.read_checksum(dest) == (digest, "file")
    assert not imagecache.place(src, dest, digest)  # already there


def sync_once(src: Path, directory: Path, digest: str, secret: str = "s" * 64,
              sender_secret: str | None = None, timeout: float = 20
              ) -> tuple[list[dict], list[dict], list]:
    got_recv: list[dict] = []
    got_send: list[dict] = []
    errors: list = []
    listening = threading.Event()

    def on_recv(ev: dict) -> None:
        got_recv.append(ev)
        if ev["event"] in ("listening", "done"):
            listening.set()

    def recv() -> None:
        try:
            imagecache.receive(directory, "x.raw", digest, src.stat().st_size,
                               ("127.0.0.1", 0), secret, on_recv, timeout=timeout)
        except Exception as exc:
            errors.append(exc)
            listening.set()

    t = threading.Thread(target=recv)
    t.start()
    assert listening.wait(10)
    first = got_recv[0]
    if first["event"] == "listening":
        port = int(first["address"].rsplit(":", 1)[1])
        try:
            imagecache.send(src, ("127.0.0.1", port), sender_secret or secret, got_send.append,
                            timeout=20)
        except Exception as exc:
            errors.append(exc)
    t.join(20)
    return got_recv, got_send, errors


def test_sync_copies_verifies_and_resumes(tmp_path):
    src = tmp_path / "x.raw"
    data = sparse_image(src)
    digest = imagecache.sha256_file(src)
    dest_dir = tmp_path / "osaka"
    dest_dir.mkdir()
    # an earlier copy that stopped after 2 MiB and a bit
    part = imagecache.partial_of(dest_dir / "x.raw")
    part.write_bytes(data[:(2 << 20) + 1000])
    imagecache.checksum_path(part).write_text(f"{digest}  x.raw\n")
    recv, sent, errors = sync_once(src, dest_dir, digest)
    assert errors == []
    assert recv[0]["offset"] == 2 << 20  # the cut chunk is sent again, the rest kept
    assert sent[-1]["event"] == "done" and sent[-1]["resumed_from"] == 2 << 20
    assert (dest_dir / "x.raw").read_bytes() == data
    assert imagecache.read_checksum(dest_dir / "x.raw") == (digest, "file")
    assert not part.exists()
    # a second sync finds it there: nothing goes
    recv, sent, errors = sync_once(src, dest_dir, digest)
    assert errors == [] and recv == [{"event": "done", "bytes": 0, "resumed_from": len(data),
                                      "already": True}]


def test_sync_refuses_bytes_that_do_not_match_and_a_wrong_secret(tmp_path):
    src = tmp_path / "x.raw"
    sparse_image(src)
    dest_dir = tmp_path / "osaka"
    dest_dir.mkdir()
    _, _, errors = sync_once(src, dest_dir, "0" * 64)  # not the image's checksum
    assert any("does not match its checksum" in str(e) for e in errors), errors
    assert not (dest_dir / "x.raw").exists()
    assert not imagecache.partial_of(dest_dir / "x.raw").exists()
    digest = imagecache.sha256_file(src)
    recv, _, errors = sync_once(src, dest_dir, digest, sender_secret="t" * 64, timeout=2)
    assert any(ev["event"] == "refused" for ev in recv)
    assert errors  # the sender was turned away, and the receiver gave up waiting


# --- teleport from every disk (issue 13 item 3): several disks in one stream ---------------


def test_two_disks_teleport_in_one_stream_and_count_per_disk(tmp_path):
    """Root and data disk in one stream: disk i's offsets are (i << 48) | offset, both relays
    list the disks in the same order; a page the base no longer holds (written since) is sent
    whole and counted against its disk; the decoder rebuilds the stream byte for byte."""
    import io
    import random

    from pcteleport.teleport import wan
    from pcteleport.teleport.decoder import ReplicaMismatch, decode_all, iter_frames
    from pcteleport.teleport.disk import DiskSet, disk_offset, open_disks, split_offset
    from pcteleport.teleport.encoder import Encoder
    from pcteleport.teleport.mapfile import RestorableMap
    from pcteleport.teleport.stream import BytesReader
    from tests.streamgen import PAGE, build_stream

    rng = random.Random(7)
    data, root = tmp_path / "data.raw", tmp_path / "root.raw"
    data.write_bytes(rng.randbytes(64 * PAGE))
    root.write_bytes(rng.randbytes(32 * PAGE))
    assert split_offset(disk_offset(1, 5 * PAGE)) == (1, 5 * PAGE)
    disks = open_disks([str(data), str(root)])
    assert isinstance(disks, DiskSet) and disks.sizes == [64 * PAGE, 32 * PAGE]
    assert disks.block(disk_offset(1, 3 * PAGE)) == root.read_bytes()[3 * PAGE:4 * PAGE]
    assert disks.block(disk_offset(2, 0)) is None and disks.block(disk_offset(1, 32 * PAGE)) \
        is None
    assert disks.locate(disk_offset(1, 8192)) == (root, 8192)
    pages = [("pc.ram", i * PAGE, data.read_bytes()[(10 + i) * PAGE:(11 + i) * PAGE])
             for i in range(8)]  # RAM pages 0-7: data blocks 10-17
    pages += [("pc.ram", (8 + i) * PAGE, root.read_bytes()[(4 + i) * PAGE:(5 + i) * PAGE])
              for i in range(6)]  # RAM pages 8-13: root blocks 4-9
    pages += [("pc.ram", 14 * PAGE, rng.randbytes(PAGE))]  # mapped to root block 10: rewritten
    stream = build_stream([pages], blocks={"pc.ram": 64 * PAGE})
    rmap = RestorableMap(extents=[(0, disk_offset(0, 10 * PAGE), 8 * PAGE),
                                  (8 * PAGE, disk_offset(1, 4 * PAGE), 7 * PAGE)])
    out = io.BytesIO()
    enc = Encoder(wan.FrameWriter(out.write), rmap, disks)
    enc.hello()
    counters = enc.run(BytesReader(stream))
    assert counters.pages_teleported == 14 and counters.pages_refused == 1
    assert enc.teleported_by_disk == {0: 8, 1: 6} and enc.refused_by_disk == {1: 1}

    def decode(replicas) -> bytes:
        got = io.BytesIO()
        reader = wan.FrameReader(io.BytesIO(out.getvalue()).read)
        decode_all(iter_frames(reader), replicas, got.write)
        return got.getvalue()

    assert decode(open_disks([str(data), str(root)])) == stream
    # the destination lists its disks in another order: its hash check refuses the pages
    with pytest.raises(Exception, match="replica"):
        decode(open_disks([str(root), str(data)]))
    # a destination root base that differs at one teleported block: named, with its image
    bad = tmp_path / "root-bad.raw"
    blob = bytearray(root.read_bytes())
    blob[5 * PAGE] ^= 0xFF
    bad.write_bytes(bytes(blob))
    with pytest.raises(ReplicaMismatch, match=f"replica {bad} differs from the source at byte "
                       f"{5 * PAGE}"):
        decode(open_disks([str(data), str(bad)]))


def test_map_feed_merges_the_maps_of_several_disks(monkeypatch):
    from pcteleport.records import MigrationRecord, Mode, Phase
    from pcteleport.sites.libvirt.migration import maps
    from pcteleport.sites.libvirt.migration.journal import Journal
    from pcteleport.teleport import mapfile
    from pcteleport.teleport.disk import disk_offset

    page = 4096
    per_disk = {"pctdata": [(0, 8 * page, page)], "pctroot": [(page, 2 * page, page)]}

    class Agent:
        def restorable_map(self, disk: str):
            return (mapfile.RestorableMap(extents=per_disk[disk]).to_text(),
                    {"pages": "1", "source": "module", "elapsed-ms": "2.5"})

    fed: list = []
    relays = SimpleNamespace(feed_map=lambda text: fed.append(mapfile.parse_text(text).extents),
                             end_maps=lambda: None, map_problem=None)
    rec = MigrationRecord(run_id="r", vm="web", from_site="a", to_site="b", mode=Mode.TELEPORT)
    journal = Journal(rec, lambda ev: None)
    journal.phase(Phase.ITERATIVE, 1)
    feed = maps.MapFeed(SimpleNamespace(data_serial="pctdata", data_disk=""), journal,
                        Agent(), relays, ["pctdata", "pctroot"])  # type: ignore[arg-type]
    feed.relay_ready.set()
    assert feed._first()
    assert fed == [[(0, disk_offset(0, 8 * page), page),
                    (page, disk_offset(1, 2 * page), page)]]
    assert "1 pages (4.0 KiB) of disk pctdata, 1 pages (4.0 KiB) of disk pctroot" in \
        rec.log[-1].text


def test_pages_per_disk_from_the_relays_counts():
    from pcteleport.records import DiskMove
    from pcteleport.sites.libvirt.migration.run import per_disk_pages
    from pcteleport.teleport import events

    plan = SimpleNamespace(data_target="vdb", disks=[
        DiskMove("vda", teleport=True, serial="pctroot"),
        DiskMove("vdb", teleport=True, serial="pctdata"),
        DiskMove("vdc", teleport=False)])
    got = per_disk_pages(plan, 130, events.DiskPages(teleported="100,30", refused="2,7"))
    assert [(d.target, d.pages_teleported, d.pages_written_since_base) for d in got] == [
        ("vda", 30, 7), ("vdb", 100, 2), ("vdc", 0, 0)]
    line = events.encode(events.DiskPages(teleported="100,30", refused="2,7", role="send"))
    assert events.decode(line) == events.DiskPages(teleported="100,30", refused="2,7",
                                                   role="send")


def test_an_image_changed_in_the_same_clock_tick_as_its_checksum_is_stale(tmp_path):
    img = tmp_path / "a.raw"
    sparse_image(img)
    imagecache.info(img)  # checksum written; the image dated back a second first
    with open(img, "r+b") as f:  # changed at once, within the timestamps' granularity
        f.write(b"\x01")
    assert imagecache.read_checksum(img) == ("", "stale")
    assert imagecache.info(img).sha256 == imagecache.sha256_file(img)


def test_overlays_go_after_a_failure_even_when_the_destinations_libvirt_is_gone():
    """libvirtd at the destination killed mid-migration: the clean-up cannot ask it which VM
    uses which image, and still removes the images this run created (it left them before)."""
    from pcteleport.sites.libvirt.site_runtime import SiteError

    ran: list = []
    p = make_plan(ran)

    def gone():
        raise SiteError("cannot reach libvirt at osaka")

    p.dst.conn = gone
    out = storage.Storage(created=["/srv/vms/web/vda.qcow2", "/srv/vms/web/vdb.qcow2"])
    lines: list[str] = []
    storage.discard_destination(p, out, lines.append)
    assert ran == [["rm", "-f", "--", "/srv/vms/web/vda.qcow2", "/srv/vms/web/vdb.qcow2"]]
    assert lines == ["removed /srv/vms/web/vda.qcow2, /srv/vms/web/vdb.qcow2 at osaka (the "
                     "migration did not complete)"] and out.created == []
