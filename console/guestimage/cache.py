"""The content-keyed cache of boot material: its folder, keys, atomic writes, host-tool runs."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

from pcteleport.errors import PcteleportError


def cache_dir() -> Path:
    return Path(os.environ.get("PCTELEPORT_CACHE", "/var/cache/pcteleport"))


def _key(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()[:20]


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _run(cmd: list[str], *, what: str, cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    except FileNotFoundError as exc:
        raise PcteleportError(f"cannot {what}: {exc.filename} is not installed "
                              "(run scripts/setup.sh)") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise PcteleportError(f"cannot {what}: {' / '.join(tail) or f'exit {proc.returncode}'}")
    return proc.stdout
