"""Typed messages. Workers (threads) only ever *post* them — `post_message` is thread-safe —
and widgets change only in their handlers, on the event loop.

Three kinds:
- a screen's own poll reporting back to it (sites, inventory, composition, replicas, records);
- a migration worker reporting to the App, which hands the report to its MigrationTracker
  (`key` names the tracked migration);
- the tracker telling the screens that observe it that a migration started, changed or ended
  (`Tracked*`; posted to each observer, they do not bubble).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from textual.message import Message

from pcteleport.record_store import LoadResult
from pcteleport.records import (
    VM,
    Composition,
    Disk,
    MigrationEvent,
    MigrationRecord,
    PredictionInputs,
    Site,
    WanLink,
)

if TYPE_CHECKING:
    from pcteleport.ui.tracker import TrackedMigration


class SitesLoaded(Message):
    def __init__(self, sites: list[Site]) -> None:
        super().__init__()
        self.sites = sites


class SitesFailed(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class InventoryLoaded(Message):
    """One site's VMs and, for running ones, their compositions (or why there is none)."""

    def __init__(self, site: str, vms: list[VM], compositions: dict[str, Composition],
                 problems: dict[str, str]) -> None:
        super().__init__()
        self.site = site
        self.vms = vms
        self.compositions = compositions
        self.problems = problems


class InventoryFailed(Message):
    def __init__(self, site: str, error: str) -> None:
        super().__init__()
        self.site = site
        self.error = error


class CompositionLoaded(Message):
    def __init__(self, vm_uuid: str, composition: Composition | None, error: str | None) -> None:
        super().__init__()
        self.vm_uuid = vm_uuid
        self.composition = composition
        self.error = error


class ReplicasLoaded(Message):
    def __init__(self, vm_uuid: str, disks: list[Disk] | None, error: str | None) -> None:
        super().__init__()
        self.vm_uuid = vm_uuid
        self.disks = disks
        self.error = error


class PredictionMeasured(Message):
    """The migrate dialog's measurement before the start (Backend.prediction_inputs)."""

    def __init__(self, vm_uuid: str, dest: str, inputs: PredictionInputs | None,
                 error: str | None) -> None:
        super().__init__()
        self.vm_uuid = vm_uuid
        self.dest = dest
        self.inputs = inputs
        self.error = error


# --- from a migration worker to the tracker (through the App) ------------------------------


class MigrationTargetFound(Message):
    """Who is being migrated and over which link, looked up before the run starts (None when
    the lookup failed: the migration still runs)."""

    def __init__(self, key: str, vm: VM | None, link: WanLink | None) -> None:
        super().__init__()
        self.key = key
        self.vm = vm
        self.link = link


class MigrationProgress(Message):
    def __init__(self, key: str, event: MigrationEvent) -> None:
        super().__init__()
        self.key = key
        self.event = event


class MigrationFinished(Message):
    def __init__(self, key: str, record: MigrationRecord) -> None:
        super().__init__()
        self.key = key
        self.record = record


class MigrationCouldNotStart(Message):
    def __init__(self, key: str, error: str) -> None:
        super().__init__()
        self.key = key
        self.error = error


class AbortFailed(Message):
    def __init__(self, vm_uuid: str, error: str) -> None:
        super().__init__()
        self.vm_uuid = vm_uuid
        self.error = error


# --- from the tracker to the screens that observe it ---------------------------------------


class TrackedMigrationStarted(Message, bubble=False):
    def __init__(self, migration: TrackedMigration) -> None:
        super().__init__()
        self.migration = migration


class TrackedMigrationChanged(Message, bubble=False):
    """Something new about a running migration: `event` is the backend's event that brought
    it, None for anything else (its target found, a line the console added to its log)."""

    def __init__(self, migration: TrackedMigration, event: MigrationEvent | None) -> None:
        super().__init__()
        self.migration = migration
        self.event = event


class TrackedMigrationEnded(Message, bubble=False):
    """Its final record is in, whatever the result."""

    def __init__(self, migration: TrackedMigration) -> None:
        super().__init__()
        self.migration = migration


# --- the compare screen ----------------------------------------------------------------------


class RecordsLoaded(Message):
    def __init__(self, result: LoadResult) -> None:
        super().__init__()
        self.result = result


class Exported(Message):
    def __init__(self, paths: list[Path], error: str | None = None) -> None:
        super().__init__()
        self.paths = paths
        self.error = error
