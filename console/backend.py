"""The contract between a migration backend and everything that shows it (console, CLI, bench).

No Textual here. Every method is *blocking* and safe to call from any thread: the console calls
them from thread workers, the CLI calls them directly. Why blocking: libvirt-python is blocking;
a backend that also needs asyncio (asyncssh to hosts and guest agents) runs its own event loop in
a thread of its own and waits on `asyncio.run_coroutine_threadsafe(coro, loop).result()`, so
callers never have to know which of its calls are async.

A migration is one blocking call, `migrate(request, on_event)`, that reports its progress through
`on_event` — phase marks, one sample and one log line per second — in time order, from the
calling thread or the backend's own; the caller must not block in `on_event` (the console just
posts a message). It returns the finished MigrationRecord: failures are *in* the record
(result FAILED + an error that says what to do next), not exceptions. `abort(vm_uuid)` may be
called from another thread while `migrate` runs; `migrate` then returns promptly with result
ABORTED, the source VM still running.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from pcteleport.errors import PcteleportError
from pcteleport.record_store import LoadResult
from pcteleport.records import (
    VM,
    BaseImage,
    Composition,
    Disk,
    DiskMove,
    MigrationEvent,
    MigrationRecord,
    Mode,
    PredictionInputs,
    Site,
)

EventSink = Callable[[MigrationEvent], None]


class ServiceError(PcteleportError):
    """A request the backend cannot start (unknown VM or site, site unreachable, ...)."""


#: pages the guest checks against its disk after a migration by default (files drawn at random,
#: a random run of a big file's pages, until this many were checked: 0.3-4 s of a TCG guest)
VERIFY_SAMPLE_PAGES = 1024


@dataclass(frozen=True)
class MigrationRequest:
    vm_uuid: str
    to_site: str
    mode: Mode
    bandwidth_cap_bytes_per_s: float | None = None
    #: after the migration, the guest compares this many of its cached pages with the disk,
    #: drawn as VERIFY_SAMPLE_PAGES says (0: every cached page; a full check costs a TCG guest
    #: tens of seconds)
    verify_pages: int = VERIFY_SAMPLE_PAGES
    #: QEMU slows the guest's vCPUs while its dirty rate outruns the link (libvirt's
    #: VIR_MIGRATE_AUTO_CONVERGE), so a write-heavy guest's precopy ends
    auto_converge: bool = False
    #: migrate even where the engine is known to corrupt the guest (engine.tcg_dirty_page_bug);
    #: without it such a request is refused with that one-line reason before anything starts
    force: bool = False
    #: compare guest RAM page by page across the switch-over (console/sites/libvirt/ramcheck.py)
    compare_ram: bool = False
    #: teleport's relays authenticate their frames but do not encrypt them (for comparison
    #: only; the record says so)
    insecure: bool = False
    #: measure the CPU the migration costs at each site (QEMU's migration threads, teleport's
    #: relays and tunnel ends) into the record's migration_cpu; a watcher per site while it runs
    measure_cpu: bool = False
    #: what was measured before the start (Backend.prediction_inputs): the record keeps the
    #: prediction it gives for this mode, and T_min, beside what the run measured
    prediction_inputs: PredictionInputs | None = None


class Backend(ABC):
    """What the console needs from sites, guest agents and the migration service."""

    #: shown in the console's title bar, e.g. "lab" or "replay of web-teleport.json"
    title: str = "pcteleport"

    @abstractmethod
    def sites(self) -> list[Site]:
        """Every configured site with its connection state and WAN links (never raises for an
        unreachable site: it comes back with connection ERROR and an `error` to act on)."""

    @abstractmethod
    def vms(self, site: str) -> list[VM]:
        """The VMs defined at `site`. Raises ServiceError if the site is unknown or unreachable."""

    @abstractmethod
    def composition(self, vm_uuid: str) -> Composition:
        """The VM's memory composition from its guest agent. When the agent cannot walk the page
        cache it still answers, with source FALLBACK and `error` set; ServiceError only when the
        agent cannot be reached at all."""

    def engine_warning(self, vm_uuid: str) -> str | None:
        """Why migrating this VM from where it runs may corrupt it (engine.tcg_dirty_page_bug),
        or None. `migrate` refuses such a request unless it says `force`."""
        return None

    def replicas(self, vm_uuid: str) -> list[Disk]:
        """The VM's disks with the state of their replica at each site. May be slow (it asks
        every site), so the console calls it once per detail view, not every poll. The default
        knows no replicas; ServiceError if the VM cannot be found."""
        return []

    def disk_plan(self, vm_uuid: str, to_site: str) -> list[DiskMove]:
        """How a migration of the VM to `to_site` would move each of its disks, asked before
        the start (the migrate dialog, `pcteleport migrate`): its writable layer over a base the
        destination holds, or whole when the destination lacks that base or holds other bytes
        under its name — and then teleport is off for that disk, `reason` says why in one line.
        May be slow (it reads both sites' image caches); the default knows no disks. Raises
        ServiceError if the VM or the site cannot be found."""
        return []

    def disk_warnings(self, vm_uuid: str, to_site: str) -> list[str]:
        """One line per disk whose base image keeps teleport off or makes the disk go whole
        (from `disk_plan`), e.g. "vdb: base web-data-….raw is missing at osaka (copy it once
        with `pcteleport images sync web-data-….raw --to osaka`): teleport is off for vdb and
        it is copied whole". The migration still runs."""
        return [f"{d.target}: {d.reason}" for d in self.disk_plan(vm_uuid, to_site) if d.reason]

    def prediction_inputs(self, vm_uuid: str, to_site: str,
                          cap_bytes_per_s: float | None = None,
                          auto_converge: bool = False) -> PredictionInputs:
        """What the prediction of a migration of the VM to `to_site` is made of, measured now
        (pcteleport.predict says what each mode would send and take, and T_min). Slow: seconds
        (a fresh map, a RAM sample, a dirty-rate measurement); starts nothing. The default
        knows only the composition and the link."""
        from pcteleport.predict import inputs_from_composition

        comp = self.composition(vm_uuid)
        vm = next((v for s in self.sites() for v in self.vms(s.name)
                   if vm_uuid in (v.uuid, v.name)), None)
        if vm is None:
            raise ServiceError(f"no VM '{vm_uuid}'")
        site = next(s for s in self.sites() if s.name == vm.site)
        link = site.link_to(to_site)
        inp = inputs_from_composition(comp, link.rate_bytes_per_s if link else None,
                                      link.rtt_ms if link else None, cap_bytes_per_s,
                                      vm.memory_bytes or None)
        inp.auto_converge = auto_converge
        return inp

    def images(self, verify: bool = False) -> list[BaseImage]:
        """The base images of every site's image cache (slow with `verify`: every image is read
        again). The default knows none."""
        return []

    @abstractmethod
    def migrate(self, request: MigrationRequest, on_event: EventSink) -> MigrationRecord:
        """Run one migration to the end (see the module docstring) and record it."""

    @abstractmethod
    def abort(self, vm_uuid: str) -> None:
        """Ask the running migration of `vm_uuid` to stop; returns at once. No-op if none runs."""

    @abstractmethod
    def records(self) -> LoadResult:
        """Finished runs to compare (the record store, or a replay's recordings)."""

    def autoplay(self) -> MigrationRequest | None:
        """A migration the console should start as soon as it opens (a replay does), else None."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook, most backends have nothing to release
        """Release connections; called once when the console exits."""
