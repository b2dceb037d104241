"""Open the console: on the configured sites, or on recordings (`pcteleport replay`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pcteleport.backend import Backend


def run_console(backend: Backend, refresh_s: float = 2.0) -> int:
    from pcteleport.ui.app import create_app

    try:
        create_app(backend, refresh_s=refresh_s).run()
    finally:
        backend.close()  # after the event loop: closing connections may block
    return 0


def run_configured(refresh_s: float = 2.0) -> int:
    from pcteleport.sites.backends import open_configured_backend

    return run_console(open_configured_backend(), refresh_s)


def replay_paths(args: Sequence[str]) -> list[Path]:
    """Files as given; a directory stands for the records in it, oldest first."""
    out: list[Path] = []
    for arg in args:
        path = Path(arg)
        out.extend(sorted(path.glob("*.json")) if path.is_dir() else [path])
    return out


def run_replay(files: Sequence[str], speed: float) -> int:
    from pcteleport.sites.replay import ReplayBackend

    return run_console(ReplayBackend.from_files(replay_paths(files), speed))
