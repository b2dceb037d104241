"""The real backend: sites from the sites config, libvirt for inventory and migration, SSH for
site hosts, guest agents and relays. Blocking methods, safe from any thread (see service.py)."""

from __future__ import annotations

import contextlib
import re
import threading
import time
from pathlib import Path

import libvirt

from pcteleport.backend import Backend, EventSink, MigrationRequest, ServiceError
from pcteleport.engine import tcg_dirty_page_bug
from pcteleport.errors import PcteleportError
from pcteleport.predict import keep_prediction
from pcteleport.record_store import LoadResult, RecordStore
from pcteleport.records import (
    VM,
    BaseImage,
    Composition,
    ConnectionState,
    Disk,
    DiskMove,
    LogLine,
    MigrationRecord,
    Mode,
    PredictionInputs,
    Replica,
    ReplicaState,
    Site,
    VMState,
    WanLink,
)
from pcteleport.sites import config as sites_config
from pcteleport.sites import images as site_images
from pcteleport.sites.guest_agent import AgentUnavailable, GuestAgent
from pcteleport.sites.libvirt.lifecycle import use_event_loop
from pcteleport.sites.libvirt.migration import MigrationRun, plan_for, storage
from pcteleport.sites.libvirt.site_runtime import DomainDisk, SiteRuntime, domain_disks, is_tcg
from pcteleport.sites.remote import LoopThread

STATES = {
    libvirt.VIR_DOMAIN_RUNNING: VMState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: VMState.RUNNING,
    libvirt.VIR_DOMAIN_PAUSED: VMState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: VMState.RUNNING,
    libvirt.VIR_DOMAIN_SHUTOFF: VMState.SHUTOFF,
    libvirt.VIR_DOMAIN_CRASHED: VMState.CRASHED,
}
PROFILE_RATES = {"default": (100e6 / 8, 50.0), "fast": (1e9 / 8, 10.0), "slow": (30e6 / 8, 100.0)}
RTT_TTL = 60.0
#: a paused domain's reasons that mean a migration holds it (its job lock, to the end)
MIGRATION_PAUSES = (libvirt.VIR_DOMAIN_PAUSED_MIGRATION, libvirt.VIR_DOMAIN_PAUSED_STARTING_UP,
                    libvirt.VIR_DOMAIN_PAUSED_POSTCOPY)


class LibvirtBackend(Backend):
    def __init__(self, cfg: sites_config.SitesConfig, store: RecordStore | None = None) -> None:
        self.cfg = cfg
        self.title = f"sites from {cfg.path}"
        self.loop = LoopThread()
        use_event_loop()  # before any connection: keepalive and lifecycle events need it
        self.sites_rt = {s.name: SiteRuntime(s, self.loop) for s in cfg.sites}
        self.store = store or RecordStore()
        self._running: dict[str, MigrationRun] = {}
        self._lock = threading.Lock()
        self._rtt: dict[tuple[str, str], tuple[float, float | None]] = {}
        self._wan_profile = cfg.wan_profile  # the live profile: bench switches it
        self._xml_seen: dict[str, str] = {}  # each VM's XML as last read (by UUID)

    @classmethod
    def from_config(cls, path: str | Path) -> LibvirtBackend:
        return cls(sites_config.load(path))

    # -- inventory --------------------------------------------------------------------------

    def _site(self, name: str) -> SiteRuntime:
        try:
            return self.sites_rt[name]
        except KeyError:
            raise ServiceError(f"no site named '{name}' (sites: {', '.join(self.sites_rt)})"
                               ) from None

    def forget_wan_measurements(self, profile: str | None = None) -> None:
        """The WAN changed (a lab profile switched to `profile`): the next sites() measures it
        again instead of stamping a cached RTT of the old link on the next record, and names
        the profile now live (not the one the config had when this backend opened), so
        records and the prediction's goodput know which link they ran on."""
        self._rtt.clear()
        if profile is not None:
            self._wan_profile = profile

    def _rtt_ms(self, a: SiteRuntime, b: SiteRuntime) -> float | None:
        key = (a.name, b.name)
        cached = self._rtt.get(key)
        if cached and time.monotonic() - cached[0] < RTT_TTL:
            return cached[1]
        rtt = None
        if b.config.wan_addr:
            try:
                out = a.host.run(["ping", "-c", "3", "-i", "0.2", "-q", b.config.wan_addr],
                                 timeout=10)
                m = re.search(r"= [\d.]+/([\d.]+)/", out.stdout)
                rtt = float(m.group(1)) if m else None
            except PcteleportError:
                rtt = None
        self._rtt[key] = (time.monotonic(), rtt)
        return rtt

    def sites(self) -> list[Site]:
        out = []
        rate, _ = PROFILE_RATES.get(self._wan_profile, (None, None))
        for rt in self.sites_rt.values():
            site = Site(name=rt.name, host=rt.config.ssh.host)
            try:
                site.libvirt_version = rt.libvirt_version()
                site.qemu_version = rt.qemu_version()
                site.connection = ConnectionState.CONNECTED
            except PcteleportError as exc:
                site.connection = ConnectionState.ERROR
                site.error = str(exc)
            for peer in self.sites_rt.values():
                if peer is rt:
                    continue
                rtt = self._rtt_ms(rt, peer) if site.connection is ConnectionState.CONNECTED \
                    else None
                site.wan.append(WanLink(peer.name, self._wan_profile, rate, rtt))
            out.append(site)
        return out

    def vms(self, site: str) -> list[VM]:
        rt = self._site(site)
        for attempt in (1, 2):
            try:
                domains = rt.conn().listAllDomains()
                break
            except libvirt.libvirtError as exc:
                # a connection libvirtd dropped (restarted, keepalive) fails once: ask anew
                rt.forget_connection()
                if attempt == 2:
                    raise ServiceError(f"listing VMs at {site}: "
                                       f"{exc.get_error_message()}") from None
            except PcteleportError as exc:
                raise ServiceError(str(exc)) from None
        out = []
        for dom in domains:
            try:
                uuid = dom.UUIDString()
                state, max_kib, _mem, vcpus, _cpu = dom.info()
                paused_for = dom.state()[1] if state == libvirt.VIR_DOMAIN_PAUSED else None
                in_migration = paused_for in MIGRATION_PAUSES
                # libvirt's XML needs the domain's job lock, which an incoming migration holds
                # to its end: asking would wait 30 s and fail, and pile up the console's polls
                xml = self._xml_seen.get(uuid) if in_migration else dom.XMLDesc(0)
                if xml is not None and not in_migration:
                    self._xml_seen[uuid] = xml
            except libvirt.libvirtError:
                continue  # it went away while we looked
            vm_state = STATES.get(state, VMState.UNKNOWN)
            if uuid in self._running or in_migration:
                vm_state = VMState.MIGRATING
            disks = ([Disk(d.target, d.path) for d in domain_disks(xml) if d.serial != "pctroot"]
                     if xml else [])
            out.append(VM(uuid, dom.name(), site, vm_state, vcpus, max_kib * 1024, disks,
                          tcg=is_tcg(xml) if xml else False,
                          qemu_version=rt.domain_qemu_version(xml) if xml else ""))
        return sorted(out, key=lambda v: v.name)

    def _locate(self, vm_uuid: str) -> tuple[SiteRuntime, libvirt.virDomain]:
        unreachable = []
        for rt in self.sites_rt.values():
            try:
                dom = rt.lookup(vm_uuid)
                if dom is not None and dom.isActive():
                    return rt, dom
            except PcteleportError as exc:  # not "not here": it may run there
                unreachable.append(str(exc))
            except libvirt.libvirtError as exc:
                unreachable.append(f"libvirt at {rt.name}: {exc.get_error_message()}")
        if unreachable:  # it may run at a site that did not answer: say which and why
            raise ServiceError(f"no running VM '{vm_uuid}' at the sites that answered; "
                               + "; ".join(unreachable))
        raise ServiceError(f"no running VM '{vm_uuid}' at any site")

    def runs_at(self, vm_uuid: str) -> str:
        """The site where the VM runs, or a sentence saying why that is not known."""
        try:
            return self._locate(vm_uuid)[0].name
        except PcteleportError as exc:
            return f"an unknown site ({exc})"

    def engine_warning(self, vm_uuid: str) -> str | None:
        rt, dom = self._locate(vm_uuid)
        try:
            xml = dom.XMLDesc(0)
            return tcg_dirty_page_bug(rt.domain_qemu_version(xml), is_tcg(xml), rt.name)
        except libvirt.libvirtError:
            return None

    def agent(self, rt: SiteRuntime, vm: str) -> GuestAgent:
        return GuestAgent(rt.host, vm, rt.config.agent_socket_dir)

    def composition(self, vm_uuid: str) -> Composition:
        rt, dom = self._locate(vm_uuid)
        try:
            return self.agent(rt, dom.name()).composition()
        except AgentUnavailable as exc:
            raise ServiceError(str(exc)) from None
        except PcteleportError as exc:
            raise ServiceError(str(exc)) from None

    def replicas(self, vm_uuid: str) -> list[Disk]:
        """The VM's disks with, per site, the state of what that site holds of it: for a disk
        on a base image, the base in the site's image cache (by checksum against the VM's
        site's); for a disk of one image, a same-sized file at the same path."""
        rt, dom = self._locate(vm_uuid)
        disks = domain_disks(dom.XMLDesc(0))
        bases = sorted({d.base for d in disks if d.base})
        held: dict[str, dict[str, object]] = {}
        for other in self.sites_rt.values():
            try:
                held[other.name] = {i.name: i for i in site_images.scan(other, bases)} \
                    if bases else {}
            except PcteleportError as exc:
                held[other.name] = {"": exc}
        out = []
        for d in disks:
            disk = Disk(d.target, d.path)
            with contextlib.suppress(libvirt.libvirtError):
                disk.size_bytes = int(dom.blockInfo(d.target)[0])
            for other in self.sites_rt.values():
                disk.replicas.append(self._base_replica(other, rt, d, held) if d.base
                                     else self._file_replica(other, d))
            out.append(disk)
        return out

    @staticmethod
    def _base_replica(site: SiteRuntime, home: SiteRuntime, d: DomainDisk,
                      held: dict[str, dict[str, object]]) -> Replica:
        name = d.base.rsplit("/", 1)[-1]
        problem = held.get(site.name, {}).get("")
        if problem is not None:
            return Replica(site.name, ReplicaState.UNKNOWN, str(problem))
        mine, ref = held[site.name].get(name), held.get(home.name, {}).get(name)
        if mine is None:
            return Replica(site.name, ReplicaState.MISSING,
                           f"no base {name} at {site.name}: pcteleport images sync {name} "
                           f"--to {site.name}")
        if ref is None or getattr(ref, "sha256", "") != getattr(mine, "sha256", None):
            return Replica(site.name, ReplicaState.DIFFERS,
                           f"base {name} at {site.name} differs from {home.name}'s (checksum "
                           f"{getattr(mine, 'sha256', '')[:12]}): replace it with pcteleport "
                           f"images sync")
        where = "overlay here" if site is home else "base only"
        return Replica(site.name, ReplicaState.IN_SYNC,
                       f"base {name}, sha256 {getattr(mine, 'sha256', '')[:12]} ({where})")

    @staticmethod
    def _file_replica(site: SiteRuntime, d: DomainDisk) -> Replica:
        try:
            res = site.host.run(["stat", "-c", "%s", d.path], timeout=10)
        except PcteleportError as exc:
            return Replica(site.name, ReplicaState.UNKNOWN, str(exc))
        if res.status != 0:
            return Replica(site.name, ReplicaState.MISSING, f"no {d.path} at {site.name}")
        return Replica(site.name, ReplicaState.IN_SYNC, f"{int(res.stdout.strip() or 0)} bytes")

    # -- disks and the image caches ---------------------------------------------------------

    def disk_plan(self, vm_uuid: str, to_site: str) -> list[DiskMove]:
        src, dom = self._locate(vm_uuid)
        dst = self._site(to_site)
        if dst is src:
            raise ServiceError(f"VM {dom.name()} already runs at {dst.name}")
        vm_cfg = self.cfg.vm(dom.name())
        try:
            plan = plan_for(dom.UUIDString(), src, dst, Mode.TELEPORT, None,
                            vm_cfg.data_disk if vm_cfg else "")
        except libvirt.libvirtError as exc:
            raise ServiceError(f"VM {dom.name()} at {src.name}: {exc.get_error_message()}"
                               ) from None
        storage.check_bases(plan)
        return plan.disks

    def prediction_inputs(self, vm_uuid: str, to_site: str,
                          cap_bytes_per_s: float | None = None,
                          auto_converge: bool = False) -> PredictionInputs:
        from pcteleport.sites.libvirt import prediction

        src, dom = self._locate(vm_uuid)
        dst = self._site(to_site)
        if dst is src:
            raise ServiceError(f"VM {dom.name()} already runs at {dst.name}")
        try:  # measuring a VM that another run moves costs it and tells nothing
            if dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE:
                raise ServiceError(f"VM {dom.name()} is being migrated: nothing measured")
        except libvirt.libvirtError:
            pass
        vm_cfg = self.cfg.vm(dom.name())
        link = next((w for s in self.sites() if s.name == src.name for w in s.wan
                     if w.peer == dst.name), None)
        try:
            plan = plan_for(dom.UUIDString(), src, dst, Mode.TELEPORT, cap_bytes_per_s,
                            vm_cfg.data_disk if vm_cfg else "", link)
            storage.check_bases(plan)
            return prediction.measure(plan, self.agent(src, plan.vm), link, self.store,
                                      cap_bytes_per_s, auto_converge)
        except libvirt.libvirtError as exc:
            raise ServiceError(f"VM {dom.name()} at {src.name}: {exc.get_error_message()}"
                               ) from None

    def images(self, verify: bool = False) -> list[BaseImage]:
        out = []
        for rt in self.sites_rt.values():
            try:
                found = site_images.scan(rt, verify=verify)
            except PcteleportError as exc:
                raise ServiceError(str(exc)) from None
            out += [BaseImage(rt.name, i.name, i.size, i.sha256, i.checksum, i.allocated)
                    for i in found]
        return out

    # -- migration --------------------------------------------------------------------------

    def migrate(self, request: MigrationRequest, on_event: EventSink) -> MigrationRecord:
        src, dom = self._locate(request.vm_uuid)
        dst = self._site(request.to_site)
        if dst is src:
            raise ServiceError(f"VM {dom.name()} already runs at {dst.name}")
        warning = self.engine_warning(dom.UUIDString())
        if warning and not request.force:
            raise ServiceError(f"{warning}; nothing was started (--force migrates anyway)")
        vm_cfg = self.cfg.vm(dom.name())
        link = next((w for s in self.sites() if s.name == src.name for w in s.wan
                     if w.peer == dst.name), None)
        try:
            plan = plan_for(dom.UUIDString(), src, dst, request.mode,
                            request.bandwidth_cap_bytes_per_s,
                            vm_cfg.data_disk if vm_cfg else "", link, request.verify_pages,
                            request.auto_converge, request.compare_ram,
                            insecure=request.insecure, measure_cpu=request.measure_cpu)
        except libvirt.libvirtError as exc:  # e.g. another migration moved it just now
            raise ServiceError(f"VM {dom.name()} changed at {src.name} while this migration was "
                               f"being prepared ({exc.get_error_message()}): see where it runs "
                               "(pcteleport vms) and ask again") from None
        try:
            comp = self.agent(src, plan.vm).composition()
        except PcteleportError:
            comp = None
        run = MigrationRun(plan, on_event, self.agent, comp)
        if warning:
            run.log(f"warning: {warning} (forced)")
        with self._lock:
            if plan.vm_uuid in self._running:
                raise ServiceError(f"VM {plan.vm} is already migrating")
            self._running[plan.vm_uuid] = run
        try:
            record = run.run()
        finally:
            with self._lock:
                self._running.pop(plan.vm_uuid, None)
        if request.prediction_inputs is not None:
            keep_prediction(record, request.prediction_inputs)
        try:
            self.store.save(record)
        except OSError as exc:
            record.log.append(LogLine(record.total_s or 0.0, f"could not save the record: {exc}"))
        return record

    def abort(self, vm_uuid: str) -> None:
        with self._lock:
            run = self._running.get(vm_uuid) or next(
                (r for r in self._running.values() if r.plan.vm == vm_uuid), None)
        if run is not None:
            run.abort()

    def records(self) -> LoadResult:
        return self.store.load_all()

    def close(self) -> None:
        for rt in self.sites_rt.values():
            rt.close()
        self.loop.close()
