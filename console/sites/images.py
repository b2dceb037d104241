"""The image caches of the sites: which base images each holds (size, checksum), whether a
destination holds the same bytes as a source, and copying a missing base over the WAN.

Everything runs on the site hosts through their `relay_command` (`pcteleport images host-scan`,
`host-recv`, `host-send`: imagecache.py), over the site's SSH login. A copy goes from the
source site's WAN address to the destination's, so it crosses the WAN like a migration does.
"""

from __future__ import annotations

import contextlib
import json
import random
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath

from pcteleport.errors import PcteleportError
from pcteleport.imagecache import ImageInfo
from pcteleport.sites.libvirt.site_runtime import SiteRuntime

PORT_RANGE = (47000, 47999)


class ImageError(PcteleportError):
    pass


def _argv(site: SiteRuntime, *args: str) -> list[str]:
    return [*site.config.relay_command, "images", *args]


def scan(site: SiteRuntime, paths: list[str] | None = None, verify: bool = False,
         timeout: float = 900) -> list[ImageInfo]:
    """The images of `site`'s cache (its image_dir), or the given image paths there (an
    absent one is left out). A missing or stale checksum is computed there (and kept)."""
    args = ["host-scan", "--json"]
    if verify:
        args.append("--verify")
    args += paths if paths is not None else ["--dir", site.config.image_dir]
    res = site.host.run(_argv(site, *args), timeout=timeout)
    if res.status != 0:
        last = (res.stderr.strip() or res.stdout.strip() or f"exit {res.status}").splitlines()
        raise ImageError(f"image cache at {site.name}: {last[-1]}")
    try:
        rows = json.loads(res.stdout.strip().splitlines()[-1])["images"]
        return [ImageInfo(**r) for r in rows]
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise ImageError(f"image cache at {site.name}: unreadable answer ({exc}): is "
                         f"pcteleport there the same version?") from None


@dataclass(frozen=True)
class BaseCheck:
    """A base image at the destination, against the source's."""

    path: str
    state: str  # "same", "missing", "differs", "unknown"
    reason: str = ""  # one line, for anything but "same"


def compare_bases(src: SiteRuntime, dst: SiteRuntime, paths: list[str]) -> dict[str, BaseCheck]:
    """Does `dst` hold each base image in `paths` with the bytes `src` has (by checksum)?"""
    if not paths:
        return {}
    out: dict[str, BaseCheck] = {}
    found: dict[str, list[ImageInfo] | PcteleportError] = {}

    def ask(site: SiteRuntime) -> None:
        try:
            found[site.name] = scan(site, paths)
        except Exception as exc:  # whatever it is, the check says "unknown" with it
            found[site.name] = PcteleportError(str(exc) or type(exc).__name__)

    asking = [threading.Thread(target=ask, args=(site,), daemon=True) for site in (src, dst)]
    for t in asking:
        t.start()
    for t in asking:
        t.join()
    for site in (src, dst):
        problem = found.get(site.name)
        if not isinstance(problem, list):
            return {p: BaseCheck(p, "unknown", f"its checksum at {site.name} is unknown "
                                               f"({problem})") for p in paths}
    have_src = {i.name: i for i in found[src.name]}  # type: ignore[union-attr]
    have_dst = {i.name: i for i in found[dst.name]}  # type: ignore[union-attr]
    for p in paths:
        name = PurePosixPath(p).name
        s, d = have_src.get(name), have_dst.get(name)
        sync = f"`pcteleport images sync {name} --to {dst.name}`"
        if s is None:
            out[p] = BaseCheck(p, "unknown", f"base {p} is not at {src.name} either")
        elif d is None:
            out[p] = BaseCheck(p, "missing", f"base {name} is missing at {dst.name} "
                                             f"(copy it once with {sync})")
        elif d.size != s.size or d.sha256 != s.sha256:
            out[p] = BaseCheck(p, "differs", f"base {name} at {dst.name} differs from "
                                             f"{src.name}'s (checksum {d.sha256[:12]} against "
                                             f"{s.sha256[:12]}; replace it with {sync})")
        else:
            out[p] = BaseCheck(p, "same")
    return out


@dataclass
class SyncResult:
    image: str
    from_site: str
    to_site: str
    already: bool  # the destination held it already
    wire_bytes: int  # bytes sent over the WAN by this run (after compression)
    resumed_from: int  # bytes of an earlier partial copy kept
    seconds: float


def sync(image: str, src: SiteRuntime, dst: SiteRuntime,
         progress: Callable[[str], None] = lambda _m: None, timeout: float = 7200) -> SyncResult:
    """Copy base `image` (a name in the cache, or a path) from `src`'s cache to `dst`'s over
    the WAN, continuing a partial copy an earlier run left, verified by its checksum."""
    t0 = time.monotonic()
    path = image if image.startswith("/") else f"{src.config.image_dir.rstrip('/')}/{image}"
    name = PurePosixPath(path).name
    found = scan(src, [path])
    if not found:
        raise ImageError(f"no image {name} at {src.name} ({path})")
    info = found[0]
    if not info.sha256:
        raise ImageError(f"image {name} at {src.name} has no checksum")
    if not (src.config.wan_addr and dst.config.wan_addr):
        raise ImageError("both sites need a wan_addr in the sites config to copy over the WAN")
    dst_dir = str(PurePosixPath(path).parent) if image.startswith("/") else dst.config.image_dir
    secret = secrets.token_hex(32)
    events: list[dict] = []
    changed = threading.Condition()

    def on_recv(line: str) -> None:
        try:
            ev = json.loads(line)
        except ValueError:
            return
        with changed:
            events.append(ev)
            changed.notify_all()

    port = random.randint(*PORT_RANGE)
    recv = dst.host.spawn(
        _argv(dst, "host-recv", "--dir", dst_dir, "--name", name, "--sha256", info.sha256,
              "--size", str(info.size), "--listen", f"{dst.config.wan_addr}:{port}",
              "--secret-file", "-"),
        on_recv, stdin=secret + "\n", close_stdin=True)
    try:
        with changed:
            ok = changed.wait_for(lambda: any(e.get("event") in ("listening", "done")
                                              for e in events) or recv.done.is_set(), 30)
        first = next((e for e in events if e.get("event") in ("listening", "done")), None)
        if not ok or first is None:
            raise ImageError(f"the copy could not start at {dst.name}: "
                             f"{recv.how_it_ended() if recv.done.is_set() else 'no answer'}")
        if first["event"] == "done":
            return SyncResult(name, src.name, dst.name, True, 0, info.size,
                              time.monotonic() - t0)
        resumed = int(first.get("offset", 0))
        if resumed:
            progress(f"continuing the partial copy at {dst.name} from byte {resumed}")
        sent: dict = {}

        def on_send(line: str) -> None:
            try:
                ev = json.loads(line)
            except ValueError:
                return
            if ev.get("event") == "progress":
                progress(f"{name}: {ev['offset'] * 100 // max(info.size, 1)}% "
                         f"({ev['wire_bytes'] / 2**20:.1f} MiB over the WAN)")
            elif ev.get("event") == "done":
                sent.update(ev)

        sender = src.host.spawn(
            _argv(src, "host-send", "--image", path,
                  "--to", f"{dst.config.wan_addr}:{port}", "--secret-file", "-"),
            on_send, stdin=secret + "\n", close_stdin=True)
        sender.wait(timeout)
        recv.wait(60)
        if recv.exit_status != 0 or sender.exit_status != 0:
            problem = (recv.how_it_ended() if recv.exit_status != 0
                       else sender.how_it_ended())
            raise ImageError(f"copying {name} to {dst.name} failed: {problem} (run the sync "
                             "again: it continues where the copy ended)")
        return SyncResult(name, src.name, dst.name, False, int(sent.get("bytes", 0)),
                          resumed, time.monotonic() - t0)
    finally:
        if not recv.done.is_set():
            pid = next((e.get("pid") for e in events if e.get("event") == "listening"), None)
            if pid:
                with contextlib.suppress(PcteleportError):
                    dst.host.run(["kill", str(pid)], timeout=10)
        recv.close()
