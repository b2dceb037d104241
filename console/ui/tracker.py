"""The migrations this console runs, owned by the App rather than by any screen.

`MigrationTracker.start` runs a migration in an App-level worker, so it outlives the screen that
launched it: a migration view is only a view of a TrackedMigration, and opening or closing one
never touches the run. The tracker keeps every running migration and the last finished ones
with all they reported, and tells the screens that observe it (`observe`) what happened through
typed messages (TrackedMigrationStarted / Changed / Ended in messages.py).

Threads: the worker calls the blocking backend and only *posts* its reports to the App, which
hands them to the tracker on the event loop; a TrackedMigration changes nowhere else.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, NamedTuple

from pcteleport.backend import Backend, MigrationRequest
from pcteleport.errors import PcteleportError
from pcteleport.records import (
    VM,
    LogLine,
    MigrationEvent,
    MigrationRecord,
    MigrationSample,
    RecordBuilder,
    Result,
    WanLink,
    log_stamp,
)
from pcteleport.ui import units
from pcteleport.ui.failures import describe
from pcteleport.ui.messages import (
    AbortFailed,
    MigrationCouldNotStart,
    MigrationFinished,
    MigrationProgress,
    MigrationTargetFound,
    TrackedMigrationChanged,
    TrackedMigrationEnded,
    TrackedMigrationStarted,
)

if TYPE_CHECKING:
    from textual.app import App
    from textual.message import Message
    from textual.message_pump import MessagePump

KEEP_FINISHED = 20  # finished migrations remembered for the session, newest kept


class MigrationRunning(PcteleportError):
    """A second migration of a VM whose migration still runs."""


class LogEntry(NamedTuple):
    text: str
    #: said by the console itself (abort requested, abort failed), not by the backend
    console: bool = False


@dataclass(eq=False)
class TrackedMigration:
    """One migration as the console knows it: what was asked, everything the backend reported,
    the progress shown so far, and how it ended. Plain data; the tracker changes it."""

    request: MigrationRequest
    key: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    vm: VM | None = None
    link: WanLink | None = None
    #: the record as reported so far (the backend's own final record is `final`)
    builder: RecordBuilder = field(init=False)
    final: MigrationRecord | None = None
    progress_high: float = 0.0  # the progress bar never goes below this
    note: str = ""  # why the bar held still, when the remainder grew
    iteration: int = 0
    lines: list[LogEntry] = field(default_factory=list)
    #: the operator has seen how it ended (in its view); until then the list points to it
    end_seen: bool = False

    def __post_init__(self) -> None:
        r = self.request
        self.builder = RecordBuilder(MigrationRecord(
            run_id=self.key, vm=r.vm_uuid, from_site="?", to_site=r.to_site, mode=r.mode,
            vm_uuid=r.vm_uuid, bandwidth_cap_bytes_per_s=r.bandwidth_cap_bytes_per_s))

    @property
    def record(self) -> MigrationRecord:
        return self.builder.record

    @property
    def running(self) -> bool:
        return self.final is None

    @property
    def wants_attention(self) -> bool:
        """Running, or ended without the operator having seen how."""
        return self.final is None or not self.end_seen

    # --- changes (the tracker calls these, on the event loop) ------------------------------

    def found(self, vm: VM | None, link: WanLink | None) -> None:
        self.vm, self.link = vm, link
        if vm is not None:
            self.record.vm = vm.name
            self.record.from_site = vm.site

    def add(self, event: MigrationEvent) -> None:
        self.builder.add(event)
        if isinstance(event, LogLine):
            self.lines.append(LogEntry(event.text))
        elif isinstance(event, MigrationSample):
            self._track_progress(event)

    def _track_progress(self, s: MigrationSample) -> None:
        samples = self.record.samples
        prev = samples[-2] if len(samples) >= 2 else None
        self.iteration = s.iteration
        done = 1.0 - s.remaining_bytes / s.total_bytes if s.total_bytes else 0.0
        if prev is not None and s.remaining_bytes > prev.remaining_bytes:
            grew = s.remaining_bytes - prev.remaining_bytes
            self.note = (f"iteration {s.iteration}: the guest dirtied memory faster than it was "
                         f"sent — {units.size(s.remaining_bytes)} left (+{units.size(grew)}); "
                         f"bar held at {self.progress_high * 100:.0f}%")
        elif done > self.progress_high:
            self.note = ""
        self.progress_high = max(self.progress_high, done)

    def say(self, text: str) -> None:
        self.lines.append(LogEntry(text, console=True))

    def finish(self, record: MigrationRecord) -> None:
        self.final = record
        if record.result is Result.OK:
            self.progress_high = 1.0
            self.note = ""

    def could_not_start(self, error: str) -> None:
        r = self.record
        self.final = MigrationRecord(
            run_id=r.run_id, vm=r.vm, from_site="?", to_site=r.to_site, mode=r.mode,
            vm_uuid=r.vm_uuid, result=Result.FAILED, error=error)


class MigrationTracker:
    """Starts migrations, keeps them, and tells observers (screens) about them."""

    def __init__(self, app: App[object], backend: Backend) -> None:
        self._app = app
        self._backend = backend
        self._migrations: dict[str, TrackedMigration] = {}  # in the order they started
        self._observers: list[MessagePump] = []

    # --- what screens read -----------------------------------------------------------------

    def migrations(self) -> list[TrackedMigration]:
        return list(self._migrations.values())

    def running(self) -> list[TrackedMigration]:
        return [m for m in self._migrations.values() if m.running]

    def latest(self, vm_uuid: str) -> TrackedMigration | None:
        """The VM's most recent migration in this console, if any."""
        for m in reversed(self._migrations.values()):
            if m.request.vm_uuid == vm_uuid:
                return m
        return None

    # --- observers -------------------------------------------------------------------------

    def observe(self, node: MessagePump) -> None:
        """`node` gets the Tracked* messages from now on (call from on_mount)."""
        if node not in self._observers:
            self._observers.append(node)

    def unobserve(self, node: MessagePump) -> None:
        if node in self._observers:
            self._observers.remove(node)

    def _tell(self, make: type[Message], migration: TrackedMigration, *args: object) -> None:
        for node in list(self._observers):
            if not node.post_message(make(migration, *args)):  # closed: it left without saying
                self._observers.remove(node)

    # --- commands --------------------------------------------------------------------------

    def start(self, request: MigrationRequest) -> TrackedMigration:
        """Start a migration in an App-level worker and track it. Raises MigrationRunning when
        this console already migrates the VM."""
        current = self.latest(request.vm_uuid)
        if current is not None and current.running:
            raise MigrationRunning(f"{current.record.vm}'s migration still runs: select it and "
                                   "press Enter to watch it")
        migration = TrackedMigration(request)
        self._migrations[migration.key] = migration
        self._forget_old()
        self._app.run_worker(partial(self._run, migration.key, request), thread=True,
                             group="migration", name=f"migration {migration.key}",
                             description=f"migrate {request.vm_uuid} to {request.to_site}")
        self._tell(TrackedMigrationStarted, migration)
        return migration

    def abort(self, vm_uuid: str) -> None:
        """Ask the backend to abort the VM's migration — one of ours or one started elsewhere
        (CLI, another console): the backend knows which runs are in flight."""
        migration = self.latest(vm_uuid)
        if migration is not None and migration.running:
            migration.say(f"{log_stamp()} abort requested by the operator")
            self._tell(TrackedMigrationChanged, migration, None)
        self._app.run_worker(partial(self._send_abort, vm_uuid), thread=True, group="abort",
                             name=f"abort {vm_uuid}")

    def saw_end(self, migration: TrackedMigration) -> None:
        """The operator has seen how it ended: the list stops pointing to it."""
        if migration.final is not None and not migration.end_seen:
            migration.end_seen = True
            self._tell(TrackedMigrationChanged, migration, None)

    def _forget_old(self) -> None:
        finished = [m for m in self._migrations.values() if not m.running]
        for m in finished[:max(0, len(finished) - KEEP_FINISHED)]:
            del self._migrations[m.key]

    # --- the workers (threads: they only call the backend and post) ------------------------

    def _run(self, key: str, request: MigrationRequest) -> None:
        post = self._app.post_message
        try:
            vm, link = self._find_target(request)
            post(MigrationTargetFound(key, vm, link))
            record = self._backend.migrate(
                request, lambda event: post(MigrationProgress(key, event)))
        except Exception as exc:  # any failure is shown; the console stays up
            post(MigrationCouldNotStart(key, describe(exc)))
            return
        post(MigrationFinished(key, record))

    def _find_target(self, request: MigrationRequest) -> tuple[VM | None, WanLink | None]:
        """Name and route for the title; not knowing them must not stop the migration."""
        try:
            sites = self._backend.sites()
        except Exception:  # the title then shows the UUID
            return None, None
        for site in sites:
            try:
                vms = self._backend.vms(site.name)
            except Exception:  # one site failing must not stop the search
                continue
            for vm in vms:
                if vm.uuid == request.vm_uuid:
                    return vm, site.link_to(request.to_site)
        return None, None

    def _send_abort(self, vm_uuid: str) -> None:
        try:
            self._backend.abort(vm_uuid)
        except Exception as exc:  # any failure is shown; the console stays up
            self._app.post_message(AbortFailed(vm_uuid, describe(exc)))

    # --- the workers' reports, handed over by the App (event loop) -------------------------

    def target_found(self, message: MigrationTargetFound) -> None:
        migration = self._migrations.get(message.key)
        if migration is not None:
            migration.found(message.vm, message.link)
            self._tell(TrackedMigrationChanged, migration, None)

    def progress(self, message: MigrationProgress) -> None:
        migration = self._migrations.get(message.key)
        if migration is not None:
            migration.add(message.event)
            self._tell(TrackedMigrationChanged, migration, message.event)

    def finished(self, message: MigrationFinished) -> None:
        migration = self._migrations.get(message.key)
        if migration is None:
            return
        migration.finish(message.record)
        record = message.record
        self._app.notify(f"{record.vm}: migration {record.result}", timeout=4,
                         severity="information" if record.result is Result.OK else "error")
        self._tell(TrackedMigrationEnded, migration)

    def could_not_start(self, message: MigrationCouldNotStart) -> None:
        migration = self._migrations.get(message.key)
        if migration is not None:
            migration.could_not_start(message.error)
            self._tell(TrackedMigrationEnded, migration)

    def abort_failed(self, message: AbortFailed) -> None:
        migration = self.latest(message.vm_uuid)
        if migration is not None and migration.running:
            migration.say(f"{log_stamp()} abort failed: {message.error}")
            self._tell(TrackedMigrationChanged, migration, None)
        self._app.notify(f"abort failed: {message.error}", severity="error", timeout=6)
