"""A journal of durable writes, kept by the guest workloads so that nothing lost goes unseen.

After a write is durable (fsync'ed, or committed by the database), the workload appends one JSON
line saying what it wrote; after every migration the pcteleport guest agent ("check-writes",
guest/agent.py) reads every journal in JOURNAL_DIR and checks each line against the disk:
  {"file": PATH, "offset": N, "length": N, "blake2b": HEX}    bytes of a file (read back twice:
                                                              through the cache and with O_DIRECT)
  {"sqlite": DB, "sql": "SELECT ...", "args": [...], "blake2b": HEX}    rows a query returns
HEX is BLAKE2b (16-byte digest) of the bytes, or of the rows as compact JSON. A line is only
written after what it describes is durable, so every line must hold at any later time: what the
workload writes later never rewrites bytes or rows it journaled. The journal file itself is
fsync'ed once a second (a line in the page cache migrates with the guest's memory).
Runs inside the guest: Python >= 3.9 standard library only."""

from __future__ import annotations

import hashlib
import json
import os
import time

JOURNAL_DIR = "/var/lib/pcteleport/journals"  # on the root disk: the agent looks here


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def rows_digest(rows: list) -> str:
    return digest(json.dumps([list(r) for r in rows], separators=(",", ":")).encode())


class WriteJournal:
    """One workload's journal, started afresh (a journal describes one run of its writer)."""

    def __init__(self, path: str, sync_every_s: float = 1.0) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        self.sync_every_s = sync_every_s
        self.last_sync = time.monotonic()
        self.entries = 0

    def _append(self, entry: dict) -> None:
        entry["t"] = round(time.time(), 3)
        os.write(self.fd, (json.dumps(entry, separators=(",", ":")) + "\n").encode())
        self.entries += 1
        if time.monotonic() - self.last_sync >= self.sync_every_s:
            self.sync()

    def file_written(self, path: str, offset: int, data: bytes) -> None:
        """`data` is durable in `path` at `offset` (the caller fsync'ed it)."""
        self._append({"file": path, "offset": offset, "length": len(data),
                      "blake2b": digest(data)})

    def rows_committed(self, db: str, sql: str, args: list, rows: list) -> None:
        """A committed transaction wrote `rows`, which `sql` with `args` returns from now on."""
        self._append({"sqlite": db, "sql": sql, "args": list(args), "blake2b": rows_digest(rows)})

    def sync(self) -> None:
        os.fsync(self.fd)
        self.last_sync = time.monotonic()

    def close(self) -> None:
        self.sync()
        os.close(self.fd)
