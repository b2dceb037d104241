"""One prepare step per mode: the migrate3 parameters and flags it needs, and what it sets up
first (the guest dropping its cache, multifd zstd, the relays and the map). Every mode moves the
VM's writable disks the same way first (storage.py)."""

from __future__ import annotations

import json
import os
import secrets
import xml.etree.ElementTree as ET
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import libvirt
import libvirt_qemu

from pcteleport.records import Mode, Phase
from pcteleport.sites.guest_agent import GuestAgent
from pcteleport.sites.libvirt.migration import storage, switchover, tls
from pcteleport.sites.libvirt.migration.journal import Journal
from pcteleport.sites.libvirt.migration.maps import MapFeed
from pcteleport.sites.libvirt.migration.plan import (
    MigrationFailed,
    Plan,
    fmt_bytes,
    raw_image,
    teleport_sources,
)
from pcteleport.sites.libvirt.relays import RelayPair, TunnelPair
from pcteleport.sites.libvirt.site_runtime import SiteRuntime, qemu_dac_label

LIBVIRT_MULTIFD_ZSTD = 9_004_000  # libvirt 9.4 passes compression=zstd to multifd itself
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
SIZING_ENV = "PCTELEPORT_SWITCHOVER_BY_WAN"  # "0": QEMU sizes the switch-over alone (to compare)
BASE_FLAGS = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PERSIST_DEST
              | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)

AgentFor = Callable[[SiteRuntime, str], GuestAgent]


@dataclass
class Prepared:
    """What the prepare step made; the run holds it from the start, so an abort during the
    preparation reaches the relays already started."""

    params: dict[str, object] = field(default_factory=dict)
    flags: int = BASE_FLAGS
    relays: RelayPair | None = None
    tunnel: TunnelPair | None = None  # teleport's disk copy, encrypted through our tunnel
    maps: MapFeed | None = None  # teleport: the map and its refreshes
    sizer: switchover.DrainRate | None = None  # the switch-over sized by the WAN
    downtime: switchover.ScaledDowntime | None = None  # ... on QEMU < 8.2: by the limit
    storage: storage.Storage = field(default_factory=storage.Storage)  # the disks' copy


def prepare(plan: Plan, dom: libvirt.virDomain, journal: Journal, agent_for: AgentFor,
            out: Prepared) -> None:
    """Fill `out` for `plan`'s mode: what every mode shares, then the mode's own step."""
    if tls.uses_tls(plan):  # first: a site without certificates refuses before anything starts
        journal.log(tls.check_certificates(plan))
        out.flags |= libvirt.VIR_MIGRATE_TLS
        journal.log("TLS: QEMU encrypts guest memory and libvirt's NBD disk copy on the WAN "
                    "(libvirt's TLS migration)")
    elif plan.insecure:
        journal.log("--insecure: guest memory and disks cross the WAN in clear (for "
                    "comparison only)")
    if plan.auto_converge:
        out.flags |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
        journal.log("auto-converge: QEMU slows the guest's vCPUs while it dirties memory "
                    "faster than the link carries it")
    if plan.bandwidth_cap:
        out.params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = max(1, int(plan.bandwidth_cap / 2**20))
    storage.prepare(plan, dom, journal.log, out.storage)
    out.flags |= out.storage.flags
    out.params.update(out.storage.params)
    if out.storage.whole:
        out.params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = storage.destination_xml(dom, plan)
    STEPS[plan.mode](plan, dom, journal, agent_for, out)


def _over_the_wan(plan: Plan, out: Prepared) -> None:
    """QEMU's stream straight to the destination's WAN address."""
    if not plan.dst.config.wan_addr:
        raise MigrationFailed(f"site {plan.dst.name} has no wan_addr in the sites config")
    out.params[libvirt.VIR_MIGRATE_PARAM_URI] = f"tcp://{plan.dst.config.wan_addr}"
    out.params[libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] = plan.dst.config.wan_addr


def prepare_stock(plan: Plan, dom: libvirt.virDomain, journal: Journal, agent_for: AgentFor,
                  out: Prepared) -> None:
    _over_the_wan(plan, out)


def prepare_drop_cache(plan: Plan, dom: libvirt.virDomain, journal: Journal,
                       agent_for: AgentFor, out: Prepared) -> None:
    agent = agent_for(plan.src, plan.vm)
    before = agent.composition()
    agent.call("drop_caches", timeout=60)
    after = agent.composition()
    journal.log(f"guest dropped its page cache: clean cache {fmt_bytes(before.cache_clean)}"
                f" -> {fmt_bytes(after.cache_clean)}")
    _over_the_wan(plan, out)


def prepare_zstd(plan: Plan, dom: libvirt.virDomain, journal: Journal, agent_for: AgentFor,
                 out: Prepared) -> None:
    out.flags |= libvirt.VIR_MIGRATE_PARALLEL
    if plan.src.conn().getLibVersion() >= LIBVIRT_MULTIFD_ZSTD:
        out.params[libvirt.VIR_MIGRATE_PARAM_COMPRESSION] = "zstd"
    else:
        multifd_zstd_by_hand(dom, out.params)
        journal.log("this libvirt cannot ask for multifd zstd: set on both QEMUs directly "
                    "(source by QMP, destination by -global)")
    _over_the_wan(plan, out)


def prepare_teleport(plan: Plan, dom: libvirt.virDomain, journal: Journal,
                     agent_for: AgentFor, out: Prepared) -> None:
    """Relays up, the map on its way: it is taken from the guest while the relays start
    and libvirt prepares the destination, and handed to the send relay when it comes. The
    disks' tunnel starts beside the relays (each pair is a few SSH round trips and two
    processes starting: one after the other, they held the WAN idle ~0.5 s longer)."""
    tunnel_up = (_disks_through_tunnel(plan, out)
                 if not plan.insecure and libvirt.VIR_MIGRATE_PARAM_DISKS_URI in out.params
                 else None)
    try:
        _relays_and_map(plan, dom, journal, agent_for, out)
    except BaseException:
        if tunnel_up is not None:  # its processes must have started before anybody stops them
            tunnel_up.exception()
        raise
    if tunnel_up is not None and out.tunnel is not None:
        tunnel_up.result()
        journal.log(f"teleport: the disks' NBD copy goes through the encrypted tunnel "
                    f"({plan.src.name} {out.tunnel.path} -> {plan.dst.name} "
                    f"{plan.dst.config.wan_addr} -> its NBD server on the same path): "
                    "AES-256-GCM like the memory stream")


def _relays_and_map(plan: Plan, dom: libvirt.virDomain, journal: Journal,
                    agent_for: AgentFor, out: Prepared) -> None:
    sources = teleport_sources(plan)
    if not sources:
        if not any(d.reason for d in plan.disks):
            raise MigrationFailed(
                f"VM {plan.vm} has no disk whose image both sites hold: teleport needs one "
                "(migrate with stock instead)"
            )
        # its base is missing or different at the destination (said above): the migration
        # still runs, every page whole through the relays
        relays = out.relays = RelayPair(plan.src, plan.dst, insecure=plan.insecure)
        relays.start([], [])
        journal.log("teleport: no disk to teleport from: every page goes whole (zstd) through "
                    f"the relays: {plan.src.name} 127.0.0.1:{relays.qemu_port} -> "
                    f"{plan.dst.name} {plan.dst.config.wan_addr}")
        out.params[libvirt.VIR_MIGRATE_PARAM_URI] = f"tcp://127.0.0.1:{relays.qemu_port}"
        out.params[libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] = "127.0.0.1"
        return
    journal.phase(Phase.MAP)
    relays = out.relays = RelayPair(plan.src, plan.dst, insecure=plan.insecure)
    maps = out.maps = MapFeed(plan, journal, agent_for(plan.src, plan.vm), relays,
                              [d.serial or d.target for d in sources])
    maps.start()  # the map is taken while the relays start and libvirt prepares
    images = [raw_image(d) for d in sources]  # the same path and bytes at both sites
    try:
        relays.start(images, images)
    finally:
        maps.relay_ready.set()
    if relays.map_problem:
        raise MigrationFailed(relays.map_problem)
    journal.log(f"relays up: {plan.src.name} 127.0.0.1:{relays.qemu_port} -> "
                f"{plan.dst.name} {plan.dst.config.wan_addr}")
    size_switchover(plan, dom, journal, out)
    out.params[libvirt.VIR_MIGRATE_PARAM_URI] = f"tcp://127.0.0.1:{relays.qemu_port}"
    out.params[libvirt.VIR_MIGRATE_PARAM_LISTEN_ADDRESS] = "127.0.0.1"


def _disks_through_tunnel(plan: Plan, out: Prepared) -> Future[None]:
    """libvirt's TLS would hide the memory stream from the send relay, so teleport's NBD copy
    goes through our own tunnel, in the relays' AES-256-GCM frames: libvirt's NBD server at
    the destination on a unix socket, the same path at the source where QEMU connects.
    Started in the background: the caller waits for it once the relays are up."""
    owner = qemu_dac_label(plan.src.domain(plan.vm_uuid or plan.vm).XMLDesc(0))
    tunnel = out.tunnel = TunnelPair(plan.src, plan.dst, secrets.token_hex(32), owner)
    out.params[libvirt.VIR_MIGRATE_PARAM_DISKS_URI] = tunnel.disks_uri
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tunnel-start")
    try:
        return pool.submit(tunnel.start)
    finally:
        pool.shutdown(wait=False)  # the one task still runs; no thread is kept after it


def size_switchover(plan: Plan, dom: libvirt.virDomain, journal: Journal,
                    out: Prepared) -> None:
    """The switch-over sized by the WAN's drain rate (switchover.py): QEMU >= 8.2 is told the
    rate; an older QEMU gets its downtime limit scaled. PCTELEPORT_SWITCHOVER_BY_WAN=0 turns
    both off (to compare)."""
    if os.environ.get(SIZING_ENV, "1").strip() in ("0", "off", "no"):
        journal.record.switchover_sizing = "off"
        journal.log(f"switch-over sized by QEMU alone ({SIZING_ENV}=0): it assumes the rate at "
                    "which it writes into the relay, which teleported pages inflate")
        return
    link = plan.wan.rate_bytes_per_s if plan.wan else None
    if switchover.supported(dom):
        out.sizer = switchover.DrainRate(link)
        journal.record.switchover_sizing = switchover.PARAM
        journal.log("switch-over sized by the WAN: QEMU is told the rate at which the WAN drains "
                    "guest memory (avail-switchover-bandwidth), not the rate at which it "
                    "writes into the relay")
        return
    try:
        limit = int(dom.migrateGetMaxDowntime(0))
    except libvirt.libvirtError as exc:
        journal.log(f"this QEMU (< 8.2) sizes the switch-over by the rate it writes into the "
                    f"relay, and its downtime limit could not be read ({exc}): the downtime "
                    "may exceed the limit")
        return
    out.sizer = switchover.DrainRate(link)
    out.downtime = switchover.ScaledDowntime(limit)
    journal.record.switchover_sizing = "downtime-limit"
    journal.log(f"switch-over sized by the WAN (QEMU < 8.2): the downtime limit ({limit} ms) is "
                "scaled by the WAN's drain rate over QEMU's write rate into the relay, and "
                "given back after the run")

STEPS = {Mode.STOCK: prepare_stock, Mode.DROP_CACHE: prepare_drop_cache,
         Mode.ZSTD: prepare_zstd, Mode.TELEPORT: prepare_teleport}


def multifd_zstd_by_hand(dom: libvirt.virDomain, params: dict[str, object]) -> None:
    """Multifd zstd for a libvirt that does not know it (Debian 12's 9.0): QEMU's own
    parameter, set on the running source by QMP and given to the destination QEMU, which
    libvirt starts, as `-global migration.multifd-compression=zstd` in its XML."""
    cmd = {"execute": "migrate-set-parameters",
           "arguments": {"multifd-compression": "zstd"}}
    reply = json.loads(libvirt_qemu.qemuMonitorCommand(dom, json.dumps(cmd), 0))
    if "error" in reply:
        raise MigrationFailed(f"QEMU refused multifd zstd: {reply['error'].get('desc')}")
    ET.register_namespace("qemu", QEMU_NS)
    base = params.get(libvirt.VIR_MIGRATE_PARAM_DEST_XML)  # the storage step's, if any
    root = ET.fromstring(str(base) if base else dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE))
    cmdline = root.find(f"{{{QEMU_NS}}}commandline")
    if cmdline is None:
        cmdline = ET.SubElement(root, f"{{{QEMU_NS}}}commandline")
    for value in ("-global", "migration.multifd-compression=zstd"):
        ET.SubElement(cmdline, f"{{{QEMU_NS}}}arg", {"value": value})
    params[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = ET.tostring(root, encoding="unicode")
