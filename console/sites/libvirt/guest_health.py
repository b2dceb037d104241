"""After a switch-over: did the guest survive, and where does the VM run now?

Asked, never assumed: the destination's serial console (what the guest printed since the
migration began) for oops and panics, and both sites' libvirt for a running domain.
"""

from __future__ import annotations

import re
import shlex
import xml.etree.ElementTree as ET
from collections.abc import Iterable

import libvirt

from pcteleport.errors import PcteleportError
from pcteleport.sites.libvirt.site_runtime import SiteRuntime

#: what a guest kernel prints when it (or a process, through memory it should not touch) broke
CRASH_LINE = re.compile(r"Kernel panic|Oops|BUG: |general protection fault|"
                        r"segfault at|Fatal exception|Call Trace:")
CONSOLE_TAIL = 64 * 1024
CRASH_LINES_KEPT = 40
NOWHERE = "nowhere"


def console_log_of(xml: str) -> str:
    """The file the domain's first serial console writes to ("" if it writes to none)."""
    for serial in ET.fromstring(xml).iterfind("./devices/serial"):
        source = serial.find("source")
        if serial.get("type") == "file" and source is not None and source.get("path"):
            return source.get("path", "")
        log = serial.find("log")
        if log is not None and log.get("file"):
            return log.get("file", "")
    return ""


def console_size(site: SiteRuntime, path: str) -> int | None:
    """Bytes in a console file at `site` now (0 if there is none yet), so that later only
    what the guest printed afterwards is read; None if it cannot be told."""
    if not path:
        return None
    try:
        res = site.host.run(["stat", "-c", "%s", path], timeout=10)
    except PcteleportError:
        return None
    out = res.stdout.strip()
    return int(out) if res.status == 0 and out.isdigit() else 0


def crash_lines(site: SiteRuntime, path: str, offset: int | None) -> list[str]:
    """The console's lines after `offset`, from the first one that shows a crash on (at most
    CRASH_LINES_KEPT); [] if none does or the console cannot be read."""
    if offset is None:
        return []
    try:
        res = site.host.run(f"tail -c +{offset + 1} {shlex.quote(path)} 2>/dev/null "
                            f"| tail -c {CONSOLE_TAIL}", timeout=15)
    except PcteleportError:
        return []
    lines = [ln.rstrip() for ln in res.stdout.splitlines()]
    first = next((i for i, ln in enumerate(lines) if CRASH_LINE.search(ln)), None)
    return [] if first is None else lines[first:first + CRASH_LINES_KEPT]


def crash_summary(lines: list[str]) -> str:
    """The one line that says it best: the panic, else the first crash line."""
    return next((ln for ln in lines if "panic" in ln), lines[0]).strip()


def where_runs(sites: Iterable[SiteRuntime], vm: str) -> str:
    """The site where `vm` (name or UUID) runs, NOWHERE, or "" when a site could not be asked
    and no other runs it."""
    unknown = False
    for site in sites:
        try:
            dom = site.find_domain(vm)
            if dom is not None and dom.isActive() and \
                    dom.state()[0] in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED):
                return site.name
        except (libvirt.libvirtError, PcteleportError):
            unknown = True
    return "" if unknown else NOWHERE
