"""A backend that plays recorded migrations back, at 1× or faster: `pcteleport replay FILE`.

It shows the sites, the VM and its composition as they were when the run started, then replays
the run's phases, samples and log lines with their original spacing divided by `speed`, through
the same Backend contract as a live migration, so every screen works on it unchanged.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from pathlib import Path

from pcteleport.backend import Backend, EventSink, MigrationRequest, ServiceError
from pcteleport.record_store import LoadResult, read_record
from pcteleport.records import (
    VM,
    Composition,
    ConnectionState,
    LogLine,
    MigrationRecord,
    RecordBuilder,
    Result,
    Site,
    VMState,
    WanLink,
    log_stamp,
)


def _vm_key(record: MigrationRecord) -> str:
    # Older or hand-made records may lack the UUID; the name then stands in for it.
    return record.vm_uuid or f"replay-{record.vm}"


class ReplayBackend(Backend):
    def __init__(self, recordings: Sequence[MigrationRecord], speed: float = 1.0,
                 title: str = "replay") -> None:
        if not recordings:
            raise ServiceError("nothing to replay: give at least one recording")
        if speed <= 0:
            raise ServiceError(f"--speed must be above 0, not {speed}")
        self._records = list(recordings)
        self.speed = speed
        self.title = title
        self._lock = threading.Lock()
        self._stop: dict[str, threading.Event] = {}
        # Where each VM is now: it moves to the destination once its replayed run succeeds.
        self._where: dict[str, str] = {}
        self._migrating: set[str] = set()
        for r in self._records:
            self._where.setdefault(_vm_key(r), r.from_site)

    @classmethod
    def from_files(cls, paths: Sequence[Path], speed: float = 1.0) -> ReplayBackend:
        records = [read_record(p) for p in paths]
        names = ", ".join(p.name for p in paths[:2]) + (" …" if len(paths) > 2 else "")
        return cls(records, speed, title=f"replay of {names}")

    # --- inventory -------------------------------------------------------------------------

    def sites(self) -> list[Site]:
        names: list[str] = []
        links: dict[str, dict[str, WanLink]] = {}
        for r in self._records:
            for name in (r.from_site, r.to_site):
                if name not in names:
                    names.append(name)
            if r.wan is not None:
                links.setdefault(r.from_site, {})[r.to_site] = dataclasses.replace(
                    r.wan, peer=r.to_site)
                links.setdefault(r.to_site, {})[r.from_site] = dataclasses.replace(
                    r.wan, peer=r.from_site)
        return [
            Site(name=n, host="recording", connection=ConnectionState.REPLAY,
                 wan=list(links.get(n, {}).values()))
            for n in names
        ]

    def vms(self, site: str) -> list[VM]:
        known = {r.from_site for r in self._records} | {r.to_site for r in self._records}
        if site not in known:
            raise ServiceError(f"no recording involves site {site!r}")
        out: dict[str, VM] = {}
        with self._lock:
            for r in self._records:
                key = _vm_key(r)
                if self._where[key] != site or key in out:
                    continue
                total = r.composition.total if r.composition else r.guest_bytes
                state = VMState.MIGRATING if key in self._migrating else VMState.RUNNING
                out[key] = VM(uuid=key, name=r.vm, site=site, state=state, memory_bytes=total)
        return list(out.values())

    def composition(self, vm_uuid: str) -> Composition:
        for r in self._records:
            if _vm_key(r) == vm_uuid and r.composition is not None:
                return dataclasses.replace(r.composition)
        raise ServiceError("this recording holds no composition for that VM")

    def records(self) -> LoadResult:
        return LoadResult(records=list(self._records))

    def autoplay(self) -> MigrationRequest | None:
        r = self._records[0]
        return MigrationRequest(_vm_key(r), r.to_site, r.mode, r.bandwidth_cap_bytes_per_s)

    # --- playback --------------------------------------------------------------------------

    def _find(self, request: MigrationRequest) -> MigrationRecord:
        """The recording of this VM in this mode: the exact route if recorded, else the same
        VM and mode on any route (a demo replays stock, then teleport, of the same VM)."""
        with self._lock:
            here = self._where.get(request.vm_uuid)
        same = [r for r in self._records
                if _vm_key(r) == request.vm_uuid and r.mode == request.mode]
        exact = [r for r in same if r.to_site == request.to_site and r.from_site == here]
        if exact or same:
            return (exact or same)[0]
        held = "; ".join(f"{r.vm} {r.from_site}→{r.to_site} {r.mode}" for r in self._records)
        raise ServiceError(f"no recording of that migration; the recordings hold: {held}")

    def migrate(self, request: MigrationRequest, on_event: EventSink) -> MigrationRecord:
        source = self._find(request)
        stop = threading.Event()
        with self._lock:
            self._stop[request.vm_uuid] = stop
            self._migrating.add(request.vm_uuid)
        played = dataclasses.replace(source, phases=[], samples=[], log=[], result=None)
        builder = RecordBuilder(played)
        now = 0.0
        try:
            for t, event in RecordBuilder(source).events():
                if stop.wait(max(0.0, t - now) / self.speed):
                    line = LogLine(now, f"{log_stamp()} replay stopped by the operator")
                    builder.add(line)
                    on_event(line)
                    return dataclasses.replace(
                        played, result=Result.ABORTED, total_s=now, downtime_ms=None,
                        error="replay stopped by the operator (the recorded run went on)")
                now = max(now, t)
                builder.add(event)
                on_event(event)
        finally:
            with self._lock:
                self._stop.pop(request.vm_uuid, None)
                self._migrating.discard(request.vm_uuid)
        with self._lock:
            if source.result is Result.OK:
                self._where[request.vm_uuid] = source.to_site
        return dataclasses.replace(source)

    def abort(self, vm_uuid: str) -> None:
        with self._lock:
            stop = self._stop.get(vm_uuid)
        if stop is not None:
            stop.set()
