"""Where finished migration records live: one JSON file per run in a directory.

The directory is `$PCTELEPORT_RECORDS` if set, else `$XDG_DATA_HOME/pcteleport/records`
(`~/.local/share/pcteleport/records`). The compare screen, `pcteleport replay` and the
benchmark all read from here; the migration service writes here.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from pcteleport.records import MigrationRecord, RecordError


def default_records_dir() -> Path:
    override = os.environ.get("PCTELEPORT_RECORDS")
    if override:
        return Path(override)
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "pcteleport" / "records"


def read_record(path: Path) -> MigrationRecord:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise RecordError(f"cannot read record {path}: {exc.strerror}") from exc
    try:
        return MigrationRecord.from_json(text)
    except RecordError as exc:
        raise RecordError(f"{path}: {exc}") from None


@dataclass
class LoadResult:
    records: list[MigrationRecord] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # one line per file that did not load


class RecordStore:
    def __init__(self, root: Path | None = None) -> None:
        self.root = root if root is not None else default_records_dir()

    def path_for(self, record: MigrationRecord) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(record.started_at))
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{record.vm}-{record.mode}-{record.run_id}")
        return self.root / f"{stamp}-{safe}.json"

    def save(self, record: MigrationRecord) -> Path:
        """Write atomically (temp file + rename) so a reader never sees half a record."""
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path_for(record)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(record.to_json(), encoding="utf-8")
        os.replace(tmp, path)
        return path

    def load_all(self) -> LoadResult:
        out = LoadResult()
        if not self.root.is_dir():
            return out
        for path in sorted(self.root.glob("*.json")):
            try:
                out.records.append(read_record(path))
            except RecordError as exc:
                out.problems.append(str(exc))
        out.records.sort(key=lambda r: r.started_at)
        return out
