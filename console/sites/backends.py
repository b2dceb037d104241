"""Which backend `pcteleport` (no arguments) opens: the configured sites, by default the lab's.

The sites config is looked up in this order: `$PCTELEPORT_SITES`, then
`$XDG_CONFIG_HOME/pcteleport/sites.toml` (`~/.config/...`), then the one `pcteleport lab up`
writes into the lab's state directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from pcteleport.backend import Backend
from pcteleport.errors import PcteleportError


def sites_config_candidates() -> list[Path]:
    out: list[Path] = []
    if os.environ.get("PCTELEPORT_SITES"):
        out.append(Path(os.environ["PCTELEPORT_SITES"]))
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    out.append(Path(config_home) / "pcteleport" / "sites.toml")
    try:
        from pcteleport.lab.paths import LabPaths

        out.append(LabPaths.default().sites_toml)
    except (ImportError, PcteleportError):
        pass  # no lab in this build, or its state dir is unusable: the other places still count
    return out


def open_configured_backend() -> Backend:
    candidates = sites_config_candidates()
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise PcteleportError(
            "no sites configured (looked in " + ", ".join(str(p) for p in candidates) + "): "
            "run `pcteleport lab up`, or write a sites.toml, or play a recording with "
            "`pcteleport replay FILE`")
    try:
        from pcteleport.sites.libvirt.backend import LibvirtBackend  # type: ignore[import-not-found]
    except ImportError:
        raise PcteleportError(
            f"sites config {found} found, but this build has no libvirt migration service yet "
            "(issue 5): `pcteleport replay FILE` opens the console on a recording") from None
    backend: Backend = LibvirtBackend.from_config(found)
    return backend
