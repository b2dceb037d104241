"""What a prediction is made of, measured at the source just before a migration would start
(records.PredictionInputs; the model is pcteleport.predict): a fresh composition and
restorable maps from the guest agent, a zstd sample of guest RAM read from the source QEMU's
memfd (ramcheck's `guest-ram serve`), the guest's dirty rate (libvirt's
virDomainStartDirtyRateCalc, read back from the domain stats' "dirtyrate" group), the disks'
overlays and the WAN's goodput and RTT. Nothing here starts a migration."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable

import libvirt

from pcteleport.engine import dirty_bitmap_crashes
from pcteleport.errors import PcteleportError
from pcteleport.record_store import RecordStore
from pcteleport.records import PAGE_SIZE, DiskCopy, PredictionInputs, WanLink
from pcteleport.sites.guest_agent import GuestAgent
from pcteleport.sites.libvirt.migration.maps import merged
from pcteleport.sites.libvirt.migration.plan import (
    Plan,
    ram_layout,
    raw_image,
    teleport_sources,
)
from pcteleport.sites.libvirt.ramcheck import RamProbe
from pcteleport.sites.libvirt.site_runtime import is_tcg

DIRTY_CALC_S = 3  # long enough to see more than one burst of a workload, short for a dialog
SAMPLE_PAGES = 16384  # single pages for the zero share (±0.4 %); as many in runs of 64 for zstd
GOODPUT_RECORDS = 5  # recent runs over the same link whose WAN rate tells its goodput
DIRTY_MODES = {libvirt.VIR_DOMAIN_DIRTYRATE_MODE_DIRTY_BITMAP: "dirty-bitmap",
               libvirt.VIR_DOMAIN_DIRTYRATE_MODE_PAGE_SAMPLING: "page-sampling"}


def dirty_rate(dom: libvirt.virDomain, conn: libvirt.virConnect,
               seconds: int = DIRTY_CALC_S, bitmap: bool = True) -> tuple[float, str]:
    """Bytes/s the guest writes, by QEMU's calc-dirty-rate: dirty-bitmap mode (every page
    written in the window counts once) where QEMU can, page sampling otherwise (and where
    `bitmap` is False: a QEMU that dirty-bitmap mode would crash), and page sampling too when
    dirty-bitmap read 0: every stored run (web, and tpcc, which rewrote ~10 MB/s during its
    migrations) read 0 that way on the lab's TCG guests: QEMU counts only KVM's dirty log
    there. A stat libvirt did not give is no reading, not 0. Returns the rate and the mode
    that measured it ("dirty-bitmap" or "page-sampling": sampling hashes pages, so it misses
    writes that leave a page's bytes as they were, which QEMU's migration bitmap counts)."""
    modes = ([libvirt.VIR_DOMAIN_DIRTYRATE_MODE_DIRTY_BITMAP] if bitmap else []) + \
        [libvirt.VIR_DOMAIN_DIRTYRATE_MODE_PAGE_SAMPLING]
    last: Exception | None = None
    readings: list[tuple[float, str]] = []
    for mode in modes:
        try:
            dom.startDirtyRateCalc(seconds, mode)
        except libvirt.libvirtError as exc:
            last = exc
            continue
        deadline = time.monotonic() + seconds + 10
        time.sleep(seconds)
        last = PcteleportError(f"no dirty rate within {seconds + 10} s")
        while time.monotonic() < deadline:
            stats = dict(conn.domainListGetStats([dom], libvirt.VIR_DOMAIN_STATS_DIRTYRATE)[0][1])
            if stats.get("dirtyrate.calc_status") == libvirt.VIR_DOMAIN_DIRTYRATE_MEASURED:
                mib = stats.get("dirtyrate.megabytes_per_second")
                if mib is None:
                    last = PcteleportError("measured, but no dirtyrate.megabytes_per_second")
                else:
                    readings.append((float(mib) * 2**20, DIRTY_MODES[mode]))
                break
            time.sleep(0.2)
        if readings and readings[-1][0] > 0:
            return readings[-1]
    if readings:
        return max(readings)
    raise PcteleportError(f"dirty rate: {last}")


def same_link(rec: WanLink | None, link: WanLink | None) -> bool:
    """A record ran on this link: the same WAN profile, and an RTT within a third of this
    one's. The RTT guards against records whose profile label was stale (bench's bring-homes
    on the fast WAN were stamped with the configured profile), or from another lab that names
    its sites alike and shares the record store."""
    if rec is None or link is None or rec.profile != link.profile:
        return False
    if rec.rtt_ms and link.rtt_ms:
        return abs(rec.rtt_ms - link.rtt_ms) <= max(2.0, link.rtt_ms / 3)
    return True


def measured_goodput(store: RecordStore, src: str, dst: str,
                     link: WanLink | None = None) -> float | None:
    """The rate the WAN carried in recent migrations from `src` to `dst` on this link (same
    profile and RTT: see same_link): the 90th percentile of their per-second WAN rates (a
    saturated link's seconds), never above the profile's rate; None if none ran."""
    recs = [r for r in store.load_all().records
            if r.from_site == src and r.to_site == dst and r.samples and same_link(r.wan, link)]
    rates = [s.wan_rate_bytes_per_s for r in sorted(recs, key=lambda r: r.started_at)
             [-GOODPUT_RECORDS:] for s in r.samples if s.wan_rate_bytes_per_s > 0]
    if len(rates) < 5:
        return None
    p90 = statistics.quantiles(rates, n=10)[-1]
    return min(p90, link.rate_bytes_per_s) if link and link.rate_bytes_per_s else p90


def disk_writes(dom: libvirt.virDomain, targets: list[str]) -> int | None:
    """Bytes written so far to these disks (libvirt's block stats), None if unknown."""
    try:
        return sum(int(dom.blockStats(t)[3]) for t in targets)
    except libvirt.libvirtError:
        return None


def measure(plan: Plan, agent: GuestAgent, link: WanLink | None, store: RecordStore | None,
            cap: float | None, auto_converge: bool,
            say: Callable[[str], None] = lambda _m: None) -> PredictionInputs:
    t0 = time.monotonic()
    dom = plan.src.domain(plan.vm)
    inp = PredictionInputs(taken_at=time.time(), ram_bytes=dom.info()[1] * 1024,
                           cap_bytes_per_s=cap, auto_converge=auto_converge)
    if link is not None:
        inp.link_rate_bytes_per_s, inp.rtt_ms = link.rate_bytes_per_s, link.rtt_ms
        inp.wan_profile, inp.profile_rate_bytes_per_s = link.profile, link.rate_bytes_per_s
    if store is not None:
        try:
            inp.link_rate_bytes_per_s = measured_goodput(store, plan.src.name, plan.dst.name,
                                                         link) or inp.link_rate_bytes_per_s
        except (OSError, PcteleportError) as exc:
            inp.problems.append(f"goodput from earlier runs: {exc}")
    moving = [d for d in plan.disks if d.writable]
    written = disk_writes(dom, [d.target for d in moving])
    inp.disk_overlay_bytes = sum(d.overlay_bytes for d in moving if d.copy is DiskCopy.OVERLAY)
    for d in moving:
        if d.copy is DiskCopy.WHOLE:
            try:
                inp.disks_whole_bytes += int(dom.blockInfo(d.target)[1])
            except libvirt.libvirtError as exc:
                inp.problems.append(f"{d.target}: {exc.get_error_message()}")
    try:
        inp.max_downtime_ms = float(dom.migrateGetMaxDowntime(0))
    except libvirt.libvirtError:
        inp.max_downtime_ms = None

    # The dirty rate is measured by QEMU while the agent walks the cache and RAM is sampled.
    rate: dict[str, tuple[float, str]] = {}
    xml = dom.XMLDesc(0)
    inp.qemu_version = plan.src.domain_qemu_version(xml)
    bitmap = not dirty_bitmap_crashes(inp.qemu_version, is_tcg(xml))

    def calc() -> None:
        try:
            rate["reading"] = dirty_rate(dom, plan.src.conn(), bitmap=bitmap)
        except (PcteleportError, libvirt.libvirtError) as exc:
            inp.problems.append(str(exc))

    dirty = threading.Thread(target=calc, name="dirty-rate", daemon=True)
    dirty.start()
    say("measuring: composition, restorable maps, RAM sample, dirty rate")
    try:
        inp.composition = agent.composition()
    except PcteleportError as exc:
        inp.problems.append(f"composition: {exc}")
    exclude: list[tuple[int, int]] = []
    sources = teleport_sources(plan)
    if sources:
        t = time.monotonic()
        try:
            texts = [(i, agent.restorable_map(d.serial or d.target)[0])
                     for i, d in enumerate(sources)]
            rmap = merged(texts)
            inp.map_s = time.monotonic() - t
            inp.restorable_bytes = rmap.pages * PAGE_SIZE
            layout = ram_layout(dom)
            for gpa, disk, length in rmap.extents:
                off = layout.ram_offset(gpa)
                if off is not None:
                    exclude.append((off // PAGE_SIZE, length // PAGE_SIZE, disk))
        except PcteleportError as exc:
            inp.problems.append(f"restorable map: {exc}")
    else:
        inp.restorable_bytes = 0
    try:
        probe = RamProbe(plan.src, plan.vm)
        try:
            s = probe.sample(SAMPLE_PAGES, exclude, disks=[raw_image(d) for d in sources])
        finally:
            probe.close()
        inp.sample_pages = int(s["pages"])
        if s.get("named"):
            inp.map_written_share = int(s.get("named_written", 0)) / int(s["named"])
        if inp.sample_pages:
            inp.zero_fraction = s["zero"] / inp.sample_pages
        if s["raw"]:
            inp.zstd_ratio = s["packed"] / s["raw"]
        if s["raw_rest"]:
            inp.zstd_ratio_rest = s["packed_rest"] / s["raw_rest"]
    except PcteleportError as exc:
        inp.problems.append(f"RAM sample: {exc}")
    dirty.join()
    if "reading" in rate:
        inp.dirty_rate_bytes_per_s, inp.dirty_rate_method = rate["reading"]
        inp.dirty_calc_s = DIRTY_CALC_S
    inp.took_s = time.monotonic() - t0
    after = disk_writes(dom, [d.target for d in moving])
    if written is not None and after is not None and inp.took_s > 0:
        inp.disk_write_bytes_per_s = max(0, after - written) / inp.took_s
    return inp
