"""A scripted in-memory backend for UI tests: sites, VMs and compositions the test sets, and a
migration whose events the test feeds one by one (or lets run), so every state can be asserted."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from pcteleport.backend import Backend, EventSink, MigrationRequest, ServiceError
from pcteleport.record_store import LoadResult
from pcteleport.records import (
    VM,
    Composition,
    CompositionSource,
    ConnectionState,
    Disk,
    LogLine,
    MigrationEvent,
    MigrationRecord,
    MigrationSample,
    PageCounts,
    Phase,
    PhaseMark,
    PredictionInputs,
    RecordBuilder,
    Replica,
    ReplicaState,
    Result,
    Site,
    VMState,
    WanLink,
)

GIB = 2**30
MIB = 2**20
STAMP = "2025-11-24 16:00:"  # log lines carry their own wall-clock stamp, Proxmox style
#: a step-by-step migration nobody releases gives up after this long (a failed test then ends
#: instead of waiting forever for the migration thread at the console's exit)
STEP_PATIENCE_S = 30.0


def make_sites() -> list[Site]:
    link = dict(profile="100mbit-50ms", rate_bytes_per_s=11.8e6, rtt_ms=50.4)
    return [
        Site("tokyo", "10.77.0.1", "9.0.0", ConnectionState.CONNECTED,
             wan=[WanLink(peer="osaka", **link)]),  # type: ignore[arg-type]
        Site("osaka", "10.77.0.2", "9.0.0", ConnectionState.CONNECTED,
             wan=[WanLink(peer="tokyo", **link)]),  # type: ignore[arg-type]
    ]


def make_vm(name: str, uuid: str, site: str = "tokyo", memory: int = GIB,
            state: VMState = VMState.RUNNING) -> VM:
    disk = Disk("vdb", f"/var/lib/pcteleport/{name}-data.raw", 4 * GIB,
                replicas=[Replica("osaka", ReplicaState.IN_SYNC)])
    return VM(uuid, name, site, state, vcpus=1, memory_bytes=memory, disks=[disk])


def make_composition(total: int = GIB, restorable: int = 300 * MIB) -> Composition:
    clean = restorable + 40 * MIB
    anon = 200 * MIB
    kernel = 60 * MIB
    dirty = 8 * MIB
    free = total - clean - anon - kernel - dirty
    return Composition(total=total, free=free, anon=anon, kernel=kernel, cache_clean=clean,
                       cache_dirty=dirty, restorable=restorable,
                       source=CompositionSource.MODULE, taken_at=1_764_000_000.0)


def scripted_events(total: int = GIB) -> list[MigrationEvent]:
    """Prepare, map, three precopy iterations in which the remainder grows once, stop-and-copy,
    resume, done — with samples and log lines, as a live run would report them."""
    evs: list[MigrationEvent] = [
        PhaseMark(Phase.PREPARE, 0.0), LogLine(0.0, f"{STAMP}00 starting migration"),
        PhaseMark(Phase.MAP, 0.5), PhaseMark(Phase.ITERATIVE, 1.0, 1)]
    remaining = [700 * MIB, 400 * MIB, 450 * MIB, 60 * MIB]
    for i, rem in enumerate(remaining, start=1):
        t = float(i + 1)
        evs.append(MigrationSample(
            t=t, phase=Phase.ITERATIVE, guest_rate_bytes_per_s=300 * MIB,
            wan_rate_bytes_per_s=11 * MIB, remaining_bytes=rem, total_bytes=total,
            iteration=1 if i < 3 else i - 1, dirty_rate_bytes_per_s=20 * MIB,
            pages=PageCounts(teleported=i * 10_000, zero=i * 20_000, sent=i * 3_000),
            expected_downtime_ms=300.0 - i * 10))
        evs.append(LogLine(t, f"{STAMP}{int(t):02d} migration active, transferred {i * 100} MiB"))
    evs += [PhaseMark(Phase.STOP_AND_COPY, 6.0), PhaseMark(Phase.RESUME, 6.3),
            PhaseMark(Phase.DONE, 6.5), LogLine(6.5, f"{STAMP}06 migration finished successfully")]
    return evs


@dataclass
class FakeBackend(Backend):
    sites_list: list[Site] = field(default_factory=make_sites)
    vms_by_site: dict[str, list[VM]] = field(default_factory=dict)
    compositions: dict[str, Composition] = field(default_factory=dict)
    agent_down: set[str] = field(default_factory=set)
    stored: list[MigrationRecord] = field(default_factory=list)
    events: list[MigrationEvent] = field(default_factory=scripted_events)
    step_by_step: bool = False  # when True, each event waits for release()
    outcome: dict[str, object] = field(default_factory=dict)  # fields the final record gets
    title: str = "test"
    calls: list[str] = field(default_factory=list)
    dirty_rate_method: str = ""  # how the stand-in dirty rate was measured

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._step = threading.Semaphore(0)
        self._abort = threading.Event()
        self.aborted: list[str] = []
        self.requests: list[MigrationRequest] = []

    def sites(self) -> list[Site]:
        self.calls.append("sites")
        return list(self.sites_list)

    def vms(self, site: str) -> list[VM]:
        self.calls.append(f"vms:{site}")
        if site not in {s.name for s in self.sites_list}:
            raise ServiceError(f"unknown site {site}")
        with self._lock:
            return list(self.vms_by_site.get(site, []))

    def composition(self, vm_uuid: str) -> Composition:
        self.calls.append(f"composition:{vm_uuid}")
        if vm_uuid in self.agent_down:
            raise ServiceError("guest agent does not answer: is the VM booted?")
        return self.compositions[vm_uuid]

    def prediction_inputs(self, vm_uuid: str, to_site: str,
                          cap_bytes_per_s: float | None = None,
                          auto_converge: bool = False) -> PredictionInputs:
        """The base's inputs from the composition, plus fixed stand-ins for what the real
        backend measures (sample, map, dirty rate, overlays)."""
        self.calls.append(f"prediction:{vm_uuid}:{to_site}")
        inp = super().prediction_inputs(vm_uuid, to_site, cap_bytes_per_s, auto_converge)
        comp = inp.composition
        assert comp is not None
        inp.restorable_bytes, inp.map_s = comp.restorable, 1.0
        inp.sample_pages = 16384
        inp.zero_fraction = comp.free / max(1, inp.ram_bytes)
        inp.zstd_ratio, inp.zstd_ratio_rest = 0.3, 0.25
        inp.dirty_rate_bytes_per_s, inp.dirty_calc_s = 1 * 2**20, 3.0
        inp.dirty_rate_method = self.dirty_rate_method
        inp.disk_overlay_bytes = 6 * 2**20
        return inp

    def replicas(self, vm_uuid: str) -> list[Disk]:
        self.calls.append(f"replicas:{vm_uuid}")
        for vms in self.vms_by_site.values():
            for vm in vms:
                if vm.uuid == vm_uuid:
                    return vm.disks
        raise ServiceError(f"no VM {vm_uuid}")

    def release(self, n: int = 1) -> None:
        for _ in range(n):
            self._step.release()

    def migrate(self, request: MigrationRequest, on_event: EventSink) -> MigrationRecord:
        self.requests.append(request)
        vm = next(v for vs in self.vms_by_site.values() for v in vs if v.uuid == request.vm_uuid)
        record = MigrationRecord(run_id=f"run{len(self.stored) + 1}", vm=vm.name,
                                 from_site=vm.site, to_site=request.to_site, mode=request.mode,
                                 vm_uuid=vm.uuid, started_at=1_764_000_000.0)
        builder = RecordBuilder(record)
        for event in self.events:
            if self.step_by_step:
                deadline = time.monotonic() + STEP_PATIENCE_S
                while not self._step.acquire(timeout=0.05):
                    if self._abort.is_set():
                        break
                    if time.monotonic() > deadline:
                        self._abort.set()  # nobody released it: the test has failed
            if self._abort.is_set():
                record.result, record.error = Result.ABORTED, "aborted by the operator"
                self.stored.append(record)
                return record
            builder.add(event)
            on_event(event)
        record.result, record.total_s, record.downtime_ms = Result.OK, 6.5, 287.0
        record.wan_bytes, record.guest_bytes = 140 * MIB, GIB
        for name, value in self.outcome.items():
            setattr(record, name, value)
        self.stored.append(record)
        return record

    def abort(self, vm_uuid: str) -> None:
        self.aborted.append(vm_uuid)
        self._abort.set()

    def records(self) -> LoadResult:
        return LoadResult(records=list(self.stored))


def populated_backend(**kwargs: object) -> FakeBackend:
    b = FakeBackend(**kwargs)  # type: ignore[arg-type]
    vms = [make_vm("web", "u-web", memory=GIB), make_vm("tpcc", "u-tpcc", memory=GIB),
           make_vm("idle", "u-idle", memory=512 * MIB, state=VMState.SHUTOFF)]
    b.vms_by_site = {"tokyo": vms, "osaka": [make_vm("db2", "u-db2", site="osaka")]}
    b.compositions = {"u-web": make_composition(restorable=300 * MIB),
                      "u-tpcc": make_composition(restorable=600 * MIB),
                      "u-db2": make_composition(restorable=10 * MIB)}
    return b
