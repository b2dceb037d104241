"""The records every part of pcteleport shares: sites, VMs, page-cache composition, migrations.

Plain dataclasses serialised to JSON. The migration service writes them, the console shows them,
the CLI prints them and the benchmark compares them, so they hold data only — no I/O, no UI.

Units, everywhere: bytes for sizes, bytes per second for rates (the UI shows WAN rates as bits per
second, which is how operators think of links), seconds for times, milliseconds for downtime and
RTT. `t` fields are seconds since the run started.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import time
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pcteleport.errors import PcteleportError

SCHEMA_VERSION = 1
PAGE_SIZE = 4096


class RecordError(PcteleportError):
    """A record that cannot be read; the message names the field and what to do."""


# --- vocabulary ----------------------------------------------------------------------------


class ConnectionState(enum.StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    ERROR = "error"
    REPLAY = "replay"  # a site reconstructed from a recording: nothing to connect to


class VMState(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    SHUTOFF = "shut off"
    MIGRATING = "migrating"
    CRASHED = "crashed"
    UNKNOWN = "unknown"


class ReplicaState(enum.StrEnum):
    IN_SYNC = "in sync"
    DIFFERS = "differs"
    MISSING = "missing"
    UNKNOWN = "unknown"


class CompositionSource(enum.StrEnum):
    MODULE = "module"  # the kernel module walked the page cache: restorable is exact
    FALLBACK = "fallback"  # /proc/meminfo only: restorable is unknown (0)


class Mode(enum.StrEnum):
    STOCK = "stock"
    DROP_CACHE = "drop-cache"
    ZSTD = "zstd"
    TELEPORT = "teleport"


class Phase(enum.StrEnum):
    PREPARE = "prepare"
    MAP = "map"
    ITERATIVE = "iterative"
    STOP_AND_COPY = "stop-and-copy"
    RESUME = "resume"
    DONE = "done"


PHASE_ORDER: tuple[Phase, ...] = tuple(Phase)


class Result(enum.StrEnum):
    OK = "ok"
    FAILED = "failed"
    ABORTED = "aborted"


# --- inventory -----------------------------------------------------------------------------


@dataclass
class WanLink:
    """The WAN from one site to a peer, as configured (profile) and as last measured."""

    peer: str
    profile: str = ""  # e.g. "100mbit-50ms"; empty when the link is not a lab profile
    rate_bytes_per_s: float | None = None  # measured; None until measured
    rtt_ms: float | None = None


@dataclass
class Site:
    name: str
    host: str
    libvirt_version: str = ""
    connection: ConnectionState = ConnectionState.CONNECTING
    error: str | None = None  # what the operator must do, when connection is ERROR
    wan: list[WanLink] = field(default_factory=list)
    qemu_version: str = ""  # the hypervisor libvirt drives there, e.g. "10.0.2"

    def link_to(self, peer: str) -> WanLink | None:
        return next((w for w in self.wan if w.peer == peer), None)


@dataclass
class Replica:
    site: str
    state: ReplicaState = ReplicaState.UNKNOWN
    detail: str = ""  # e.g. "differs at block 1234: re-sync it"


@dataclass
class Disk:
    target: str  # guest device name, e.g. "vdb"
    path: str  # image path at the VM's current site
    size_bytes: int = 0
    replicas: list[Replica] = field(default_factory=list)


@dataclass
class BaseImage:
    """A base image in one site's image cache (`pcteleport images`)."""

    site: str
    name: str
    size_bytes: int
    sha256: str = ""  # "" when unknown
    #: where the checksum came from: "file" (its .sha256), "computed", "stale" (a checksum file
    #: older than the image), "missing", "differs" (--verify read other bytes than it says)
    checksum: str = "missing"
    allocated_bytes: int = 0


class DiskCopy(enum.StrEnum):
    """How a migration moves one disk."""

    OVERLAY = "overlay"  # its writable layer goes; the destination holds its base image
    WHOLE = "whole"  # every byte of it goes (no usable base at the destination)
    NONE = "none"  # nothing goes: read-only, the destination holds the same image


@dataclass
class DiskMove:
    """One disk of a migration: how it moves, whether teleport reads from it, and, once the
    run is over, what went. Before the start (Backend.disk_plan) only the plan is set."""

    target: str  # vda, vdb
    path: str = ""  # the image the VM writes (its overlay), the same path at every site
    base: str = ""  # the raw base image under it ("" for a disk of one image)
    writable: bool = True
    copy: DiskCopy = DiskCopy.OVERLAY
    teleport: bool = False  # the restorable map of this disk is teleported
    #: one line when teleport is off for this disk or it is copied whole (base missing or
    #: different at the destination), "" otherwise
    reason: str = ""
    overlay_bytes: int = 0  # bytes the writable layer held at the start (allocated)
    pages_teleported: int = 0
    #: pages the guest's map named on this disk but whose block the base no longer holds
    #: (written since the base: the overlay has them), sent whole
    pages_written_since_base: int = 0
    serial: str = ""  # the guest sees the disk by it (the agent's maps ask for it)


@dataclass
class VM:
    uuid: str
    name: str
    site: str
    state: VMState = VMState.UNKNOWN
    vcpus: int = 1
    memory_bytes: int = 0
    disks: list[Disk] = field(default_factory=list)
    tcg: bool = False  # emulated CPU (libvirt domain type 'qemu'), not KVM
    qemu_version: str = ""  # of the QEMU binary the VM runs ("" if unknown: see its site's)


@dataclass
class Composition:
    """What the guest's memory holds, from its agent. All sizes in bytes.

    total = free + anon + shmem + kernel + cache_clean + cache_dirty + cache_writeback (the agent
    makes it add up). `restorable` is the part of cache_clean whose bytes are on a replicated
    disk, so the destination can read it from its replica instead of receiving it over the WAN.
    """

    total: int
    free: int = 0
    anon: int = 0
    shmem: int = 0  # tmpfs and shared memory: file-backed in name, but only in RAM
    kernel: int = 0  # kernel and everything the agent cannot attribute
    cache_clean: int = 0
    cache_dirty: int = 0
    cache_writeback: int = 0
    restorable: int = 0
    source: CompositionSource = CompositionSource.FALLBACK
    error: str | None = None  # the agent's last error, if any
    taken_at: float = 0.0  # unix time the agent read it
    restorable_age_s: float | None = None  # how old the restorable figure is; None: unknown

    @property
    def restorable_share(self) -> float:
        return self.restorable / self.total if self.total > 0 else 0.0

    @classmethod
    def from_agent(cls, data: dict[str, Any], error: str | None = None) -> Composition:
        """From the guest agent's `composition` answer (guest/agent.py, protocol version 1)."""
        try:
            restorable = data.get("restorable")
            return cls(
                total=int(data["total"]), free=int(data["free"]), anon=int(data["anon"]),
                shmem=int(data.get("shmem", 0)), kernel=int(data.get("kernel_other", 0)),
                cache_clean=int(data["clean"]), cache_dirty=int(data["dirty"]),
                cache_writeback=int(data.get("writeback", 0)),
                restorable=int(restorable) if restorable is not None else 0,
                source=CompositionSource(data.get("source", "fallback")),
                error=error, taken_at=float(data.get("t", 0.0)),
                restorable_age_s=data.get("restorable_age_s"))
        except (KeyError, TypeError, ValueError) as exc:
            raise RecordError(f"the guest agent's composition is malformed ({exc!r}): "
                              "is the agent in the guest the same version as the console?"
                              ) from None


# --- predictions ---------------------------------------------------------------------------


@dataclass
class PredictionInputs:
    """What a prediction is made of, measured just before the start (Backend.prediction_inputs):
    kept in the record so a model changed later can be checked against the runs already made.
    None where a measurement could not be had (`problems` says why)."""

    taken_at: float = 0.0  # unix time
    took_s: float = 0.0  # how long measuring took
    ram_bytes: int = 0  # the VM's RAM as libvirt sees it
    composition: Composition | None = None
    #: bytes the fresh restorable maps name (every disk teleport reads from)
    restorable_bytes: int | None = None
    #: of the sampled pages the maps name, the share whose block on the base image holds
    #: other bytes (written since the base: the overlay has them), which teleport sends whole
    map_written_share: float | None = None
    map_s: float | None = None  # how long taking the maps took (teleport takes them again)
    #: random runs of guest pages read from the source QEMU's RAM
    sample_pages: int = 0
    zero_fraction: float | None = None  # of the pages sampled, all-zero
    #: zstd-compressed / raw size of the sampled non-zero pages: all of them (zstd mode) and
    #: those no map names (what teleport's relay compresses and sends whole)
    zstd_ratio: float | None = None
    zstd_ratio_rest: float | None = None
    #: guest memory written per second (QEMU calc-dirty-rate, over dirty_calc_s)
    dirty_rate_bytes_per_s: float | None = None
    dirty_calc_s: float = 0.0
    #: how QEMU measured it: "dirty-bitmap" (every write), "page-sampling" (pages whose bytes
    #: changed: a guest rewriting the same bytes, as one reading its cache does, looks calmer)
    dirty_rate_method: str = ""
    link_rate_bytes_per_s: float | None = None  # the WAN's goodput
    rtt_ms: float | None = None
    #: the lab WAN profile the link had (empty: not a lab link) and its configured rate: the
    #: goodput can be no higher, whatever earlier records said
    wan_profile: str = ""
    profile_rate_bytes_per_s: float | None = None
    cap_bytes_per_s: float | None = None
    disk_overlay_bytes: int = 0  # the writable layers the storage migration mirrors
    disks_whole_bytes: int = 0  # disks without a base at the destination: copied whole
    #: bytes/s the guest wrote to the moving disks while this was measured (libvirt's block
    #: stats): the mirror carries every write made during the migration as well
    disk_write_bytes_per_s: float | None = None
    auto_converge: bool = False
    max_downtime_ms: float | None = None  # QEMU's downtime limit for the VM's next migration
    qemu_version: str = ""  # the QEMU the VM runs at the source ("" if not known)
    problems: list[str] = field(default_factory=list)


@dataclass
class ModePrediction:
    """What one mode is predicted to send and take (pcteleport.predict)."""

    mode: Mode
    wan_bytes: int
    total_s: float | None  # None when the link rate is unknown
    memory_wan_bytes: int = 0
    disk_wan_bytes: int = 0
    converges: bool = True  # False: the guest dirties memory faster than this mode sends it
    rounds: int = 0


# --- migrations ----------------------------------------------------------------------------


@dataclass
class PhaseMark:
    """The run entered `phase` at `t`; `iteration` counts precopy rounds within ITERATIVE."""

    phase: Phase
    t: float
    iteration: int = 0


@dataclass
class LogLine:
    """One line of the migration log as the operator reads it, in the style of Proxmox's
    migration log with its own wall-clock stamp ("2026-11-25 10:00:10 migration active, …").
    Every reader (console, CLI, replay) shows `text` verbatim; `t` places it in the run."""

    t: float
    text: str


def log_stamp(at: float | None = None) -> str:
    """The stamp a log line starts with: local wall-clock time, to the second."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


@dataclass
class PageCounts:
    teleported: int = 0  # restored at the destination from its replica
    zero: int = 0  # sent as QEMU zero-page records
    sent: int = 0  # sent whole over the WAN
    #: of `sent`: pages the map named whose blocks on the base differ from them (written since
    #: the base: the VM's overlay holds those blocks), so they could not be teleported
    written_since_base: int = 0


@dataclass
class MigrationSample:
    """One per second while a migration runs (rates over the last second)."""

    t: float
    phase: Phase
    guest_rate_bytes_per_s: float  # guest memory processed by QEMU
    wan_rate_bytes_per_s: float  # measured on the WAN link itself
    remaining_bytes: int  # guest memory still to transfer (QEMU's ram.remaining)
    total_bytes: int  # guest memory size
    iteration: int = 0
    dirty_rate_bytes_per_s: float = 0.0
    pages: PageCounts = field(default_factory=PageCounts)  # cumulative
    expected_downtime_ms: float | None = None
    #: libvirt's storage migration (the disks' writable layers over NBD): bytes copied so far
    #: and bytes to copy (both grow while the guest writes); 0 when no disk moves
    disk_processed_bytes: int = 0
    disk_total_bytes: int = 0


@dataclass
class Throughput:
    """Workload throughput measured after the migration, e.g. file-read blocks/s."""

    value: float
    unit: str
    recovered_s: float | None = None  # seconds until it was back to its pre-migration level


@dataclass
class RamCheck:
    """Guest RAM compared page by page: the source's at the switch-over against the
    destination's once the stream was loaded, before the destination ran (bench soak)."""

    pages: int  # pages compared (the guest's main RAM)
    differing: int
    first: list[str] = field(default_factory=list)  # guest-physical addresses, hex, at most 16
    elapsed_s: float = 0.0
    evidence: str = ""  # where the differing pages' bytes were kept, if any differed


@dataclass
class WriteCheck:
    """The guest's write journals checked at the destination after the migration: every write
    a workload journaled as durable (a file's bytes, a committed transaction's rows) is there.
    Checked through the page cache and, for files, on the disk itself (O_DIRECT)."""

    journals: int  # journal files found in the guest
    entries: int  # journaled writes
    checked: int  # of them checked (fewer only when the check ran out of time)
    failed: int  # checked writes missing or different: lost data
    failures: list[str] = field(default_factory=list)  # the first few, each naming the write
    elapsed_s: float = 0.0

    @property
    def complete(self) -> bool:
        return self.checked == self.entries


@dataclass
class RelayCpu:
    """CPU the teleport relays used (user + system, all threads, whole process), and per GB
    (1e9 bytes) of guest memory the stream carried (its pages x 4096: teleported, zero and
    sent alike), so runs of different VMs compare."""

    send_s: float
    recv_s: float
    guest_memory_bytes: int
    send_s_per_gb: float
    recv_s_per_gb: float


@dataclass
class ProcessCpu:
    """CPU one process at one side used for a migration (user + system), and of which threads:
    the thread names counted and the seconds of each; {} when the whole process counts."""

    side: str  # "source" or "destination"
    site: str
    process: str  # "qemu", "relay send", "relay recv", "tunnel-in", "tunnel-out"
    cpu_s: float
    threads: dict[str, float] = field(default_factory=dict)


@dataclass
class MigrationCpu:
    """CPU the processes that carry a migration over the WAN (and encrypt it, when it is) used
    at each side, in seconds and per GB (1e9 bytes) of guest memory the migration moved (its
    pages x 4096: teleported, zero and sent alike). QEMU's migration threads in every mode
    (never its vCPUs: sites/libvirt/proc_cpu.py says which); teleport adds its relays and disk
    tunnel ends, each from when it listened. Measured on request (MigrationRequest.measure_cpu).
    A side's figures are None when a process there could not be measured (`missing` says
    which and why): a partial sum is no figure to compare."""

    send_s: float | None
    recv_s: float | None
    guest_memory_bytes: int
    send_s_per_gb: float | None
    recv_s_per_gb: float | None
    processes: list[ProcessCpu] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # "source: QEMU at tokyo: ..."


@dataclass
class MigrationRecord:
    run_id: str
    vm: str
    from_site: str = field(metadata={"json": "from"})
    to_site: str = field(metadata={"json": "to"})
    mode: Mode
    vm_uuid: str = ""
    bandwidth_cap_bytes_per_s: float | None = None
    started_at: float = 0.0  # unix time
    wan: WanLink | None = None  # the link used, with its measured rate and RTT
    composition: Composition | None = None  # when the migration started
    phases: list[PhaseMark] = field(default_factory=list)
    samples: list[MigrationSample] = field(default_factory=list)
    log: list[LogLine] = field(default_factory=list)
    result: Result | None = None  # None while running
    error: str | None = None
    total_s: float | None = None  # request -> VM running at the destination (resume)
    downtime_ms: float | None = None
    wan_bytes: int = 0
    guest_bytes: int = 0
    pages: PageCounts = field(default_factory=PageCounts)
    throughput_after: Throughput | None = None
    #: where the VM runs once the run ended: a site's name, "nowhere", or "" if it could not
    #: be told (checked, never assumed)
    runs_at: str = ""
    #: the destination guest's console lines that show it crashed (oops, panic), if it did
    guest_console: list[str] = field(default_factory=list)
    ram_check: RamCheck | None = None
    #: the workloads' write journals checked at the destination (None: not checked)
    write_check: WriteCheck | None = None
    #: teleport: maps taken again while the migration ran, and the pages teleported only
    #: because one of them named a page cached after the first map
    map_refreshes: int = 0
    pages_teleported_later: int = 0
    #: what protected the run's WAN traffic: one word when every stream had the same ("tls",
    #: "aes-256-gcm", "none (--insecure)", "none"), else "partial: memory X, disks Y"
    wan_encryption: str = ""
    #: per stream: guest memory ("tls": libvirt's TLS migration; "aes-256-gcm": teleport's
    #: relays) and the disks' NBD copy ("tls", "none"; "" when no disk moved)
    memory_encryption: str = ""
    disk_encryption: str = ""
    #: teleport: how the switch-over was sized by the WAN: "avail-switchover-bandwidth" (QEMU
    #: >= 8.2), "downtime-limit" (older QEMU: the limit scaled), "off", "" (not sized)
    switchover_sizing: str = ""
    #: wan_bytes split: the disks' storage migration and the memory stream (how each is
    #: measured: sites/libvirt/migration/stats.py split_wan)
    disk_wan_bytes: int = 0
    memory_wan_bytes: int = 0
    disks: list[DiskMove] = field(default_factory=list)
    #: what the model said before the start (for this run's mode), what it was made of, and
    #: the physical limit: the bytes that must cross over the WAN's goodput, plus a few RTTs
    prediction: ModePrediction | None = None
    prediction_inputs: PredictionInputs | None = None
    t_min_s: float | None = None
    #: teleport: the relays' CPU (None in other modes, or when a relay did not say)
    relay_cpu: RelayCpu | None = None
    #: CPU of every process carrying the migration, at each side (None: not measured)
    migration_cpu: MigrationCpu | None = None
    schema: int = SCHEMA_VERSION

    def summary(self) -> dict[str, Any]:
        """The one-line summary `pcteleport migrate --json` ends with (issue 5's contract)."""
        return {
            "vm": self.vm,
            "from": self.from_site,
            "to": self.to_site,
            "mode": str(self.mode),
            "result": None if self.result is None else str(self.result),
            "total_s": self.total_s,
            "downtime_ms": self.downtime_ms,
            "wan_bytes": self.wan_bytes,
            "guest_bytes": self.guest_bytes,
            "pages": {
                "teleported": self.pages.teleported,
                "zero": self.pages.zero,
                "sent": self.pages.sent,
                "teleported_after_refresh": self.pages_teleported_later,
                "written_since_base": self.pages.written_since_base,
            },
            "map_refreshes": self.map_refreshes,
            "wan_encryption": self.wan_encryption,
            "memory_encryption": self.memory_encryption,
            "disk_encryption": self.disk_encryption,
            "switchover_sizing": self.switchover_sizing,
            "disk_wan_bytes": self.disk_wan_bytes,
            "memory_wan_bytes": self.memory_wan_bytes,
            "disks": [{"target": d.target, "base": d.base, "overlay_bytes": d.overlay_bytes,
                       "pages_teleported": d.pages_teleported} for d in self.disks],
            "predicted_wan_bytes": self.prediction.wan_bytes if self.prediction else None,
            "predicted_total_s": self.prediction.total_s if self.prediction else None,
            "t_min_s": self.t_min_s,
            "runs_at": self.runs_at,
            "guest_crashed": bool(self.guest_console),
            "ram_pages_differing": None if self.ram_check is None else self.ram_check.differing,
            "writes_checked": None if self.write_check is None else self.write_check.checked,
            "writes_lost": None if self.write_check is None else self.write_check.failed,
            "relay_cpu_s_per_gb": None if self.relay_cpu is None else {
                "send": self.relay_cpu.send_s_per_gb, "recv": self.relay_cpu.recv_s_per_gb},
            "migration_cpu_s_per_gb": None if self.migration_cpu is None else {
                "send": self.migration_cpu.send_s_per_gb,
                "recv": self.migration_cpu.recv_s_per_gb},
        }

    def to_json(self, indent: int | None = 1) -> str:
        return to_json(self, indent=indent)

    @classmethod
    def from_json(cls, text: str | bytes) -> MigrationRecord:
        return from_json(cls, text)

    @property
    def current_phase(self) -> Phase | None:
        return self.phases[-1].phase if self.phases else None


MigrationEvent = PhaseMark | MigrationSample | LogLine
"""What a running migration reports; the record is these events accumulated (see RecordBuilder)."""


class RecordBuilder:
    """Accumulates a run's events into its MigrationRecord; backends and the UI share it."""

    def __init__(self, record: MigrationRecord) -> None:
        self.record = record

    def add(self, event: MigrationEvent) -> None:
        r = self.record
        if isinstance(event, PhaseMark):
            r.phases.append(event)
        elif isinstance(event, MigrationSample):
            r.samples.append(event)
            r.pages = dataclasses.replace(event.pages)
        elif isinstance(event, LogLine):
            r.log.append(event)
        else:  # pragma: no cover - the type union is closed
            raise TypeError(f"not a migration event: {event!r}")

    def events(self) -> list[tuple[float, MigrationEvent]]:
        """Every event of the record in time order (phase before sample before log at equal t)."""
        rank = {PhaseMark: 0, MigrationSample: 1, LogLine: 2}
        evs: list[MigrationEvent] = [*self.record.phases, *self.record.samples, *self.record.log]
        evs.sort(key=lambda e: (e.t, rank[type(e)]))
        return [(e.t, e) for e in evs]


# --- JSON ----------------------------------------------------------------------------------
# A small generic codec driven by the dataclasses' type hints, so adding a field is one line and
# a record written by an older version (missing optional fields) still loads.

T = TypeVar("T")


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            out[f.metadata.get("json", f.name)] = to_dict(getattr(obj, f.name))
        return out
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, list | tuple):
        return [to_dict(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj


def to_json(obj: Any, indent: int | None = 1) -> str:
    return json.dumps(to_dict(obj), indent=indent, allow_nan=False, ensure_ascii=False)


def from_json(cls: type[T], text: str | bytes) -> T:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(f"not JSON ({exc}): is this a pcteleport record?") from exc
    return from_dict(cls, data)


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    return _decode(cls, data, where or cls.__name__)


def _decode(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _decode(args[0], value, where)
    if origin is list:
        if not isinstance(value, list):
            raise RecordError(f"{where}: expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp)
        return [_decode(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecordError(f"{where}: expected an object, got {type(value).__name__}")
        _, item = typing.get_args(tp)
        return {k: _decode(item, v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            allowed = ", ".join(str(m.value) for m in tp)
            raise RecordError(f"{where}: {value!r} is not one of {allowed}") from None
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise RecordError(f"{where}: expected an object, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(tp):
            key = f.metadata.get("json", f.name)
            if key in value:
                kwargs[f.name] = _decode(hints[f.name], value[key], f"{where}.{key}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RecordError(f"{where}: missing field {key!r}")
        return tp(**kwargs)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RecordError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecordError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise RecordError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise RecordError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise TypeError(f"{where}: no JSON decoding for {tp!r}")
