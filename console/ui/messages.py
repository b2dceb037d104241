"""Typed messages from workers (threads) to widgets. Workers only ever *post* these —
`post_message` is thread-safe — and widgets change only in their handlers, on the event loop."""

from __future__ import annotations

from pathlib import Path

from textual.message import Message

from pcteleport.record_store import LoadResult
from pcteleport.records import VM, Composition, Disk, MigrationEvent, MigrationRecord, Site


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


class MigrationProgress(Message):
    def __init__(self, event: MigrationEvent) -> None:
        super().__init__()
        self.event = event


class MigrationFinished(Message):
    def __init__(self, record: MigrationRecord) -> None:
        super().__init__()
        self.record = record


class MigrationCouldNotStart(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class RecordsLoaded(Message):
    def __init__(self, result: LoadResult) -> None:
        super().__init__()
        self.result = result


class Exported(Message):
    def __init__(self, paths: list[Path], error: str | None = None) -> None:
        super().__init__()
        self.paths = paths
        self.error = error
