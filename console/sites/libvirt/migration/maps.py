"""The send relay's maps: the first from the guest agent while the relays start, then
refreshes while QEMU's passes run, so pages cached after the start are teleported too (a
database reading its tables into the cache during the migration; issue 14).

A refresh is the module's walk again (tens of ms in the guest for hundreds of MiB of cache);
only extents the relay has not had yet travel. Every page a map names is still checked against
the source's disk by the encoder and by hash at the destination, so a refresh can only add
pages that really are restorable. Refreshes stop at the switch-over: the guest is paused, and
what it cached afterwards is not in this migration.
"""

from __future__ import annotations

import threading
import time

from pcteleport.records import Phase
from pcteleport.sites.guest_agent import GuestAgent
from pcteleport.sites.libvirt.migration.journal import Journal
from pcteleport.sites.libvirt.migration.plan import Plan, fmt_bytes
from pcteleport.sites.libvirt.relays import RelayPair
from pcteleport.teleport import mapfile
from pcteleport.teleport.disk import disk_offset

REFRESH_EVERY = 2.0  # seconds between refreshes at the least...
# ...and at least as long as the last one took: a guest whose walk is slow (a busy vCPU, a
# huge cache) spends at most half its time on refreshes


def merged(maps: list[tuple[int, str]]) -> mapfile.RestorableMap:
    """One map of several disks' maps ((disk index, extent text) each): disk i's offsets moved
    to (i << DISK_BITS) | offset, the relays' single address space for all their disks."""
    out = mapfile.RestorableMap()
    for index, text in maps:
        rmap = mapfile.parse_text(text)
        if index == 0 and len(maps) == 1:
            out.meta = rmap.meta
        out.extents += [(g, disk_offset(index, d), n) for g, d, n in rmap.extents]
    return out


class MapFeed:
    def __init__(self, plan: Plan, journal: Journal, agent: GuestAgent,
                 relays: RelayPair, disks: list[str] | None = None) -> None:
        """`disks`: the serials of the disks to map, in the relays' order (default: the
        plan's data disk alone)."""
        self.plan, self.journal, self.agent, self.relays = plan, journal, agent, relays
        self.disks = disks or [plan.data_serial or plan.data_disk]
        self.relay_ready = threading.Event()  # the send relay exists: maps may go to it
        self.stopped = threading.Event()
        self.refreshes = 0
        self._known: set[tuple[int, int, int]] = set()

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True, name="teleport-maps").start()

    def stop(self) -> None:
        """No more refreshes; the relay hears it at once (its stdin ends), even while a
        refresh still waits for the guest."""
        self.stopped.set()
        self.relays.end_maps()

    def _run(self) -> None:
        if not self._first():
            return
        pause = REFRESH_EVERY
        while not self.stopped.wait(pause):
            if self.journal.current in (Phase.STOP_AND_COPY, Phase.RESUME, Phase.DONE):
                break  # the guest is paused: what it caches now is not in this migration
            t = time.monotonic()
            try:
                self._refresh()
            except Exception as exc:  # a refresh is a bonus, never a failure
                if self.stopped.is_set() or self.journal.current != Phase.ITERATIVE:
                    # the guest paused for the switch-over in the middle of its answer
                    self.journal.log(f"map refresh {self.refreshes + 1} cut short by the "
                                     "switch-over")
                else:
                    self.journal.log(f"map refresh stopped: {exc}")
                break
            pause = max(REFRESH_EVERY, time.monotonic() - t)
        self.relays.end_maps()

    def _maps(self) -> tuple[list[tuple[int, str]], list[dict[str, str]]]:
        """Each disk's map from the agent (one walk of the guest's cache per disk)."""
        texts, headers = [], []
        for index, serial in enumerate(self.disks):
            text, header = self.agent.restorable_map(serial)
            texts.append((index, text))
            headers.append(header)
        return texts, headers

    def _first(self) -> bool:
        t = time.monotonic()
        try:
            texts, headers = self._maps()
            rmap = merged(texts)
        except Exception as exc:  # whatever it is, the run must hear of it
            self.relays.map_problem = f"teleport: no restorable map from the guest agent: {exc}"
            self.journal.log(self.relays.map_problem)
            return False
        self._known.update(rmap.extents)
        self.relay_ready.wait()  # the send relay exists before its map goes to it
        self.relays.feed_map(texts[0][1] if len(texts) == 1 else rmap.to_text())
        pages = [int(h.get("pages", 0)) for h in headers]
        what = ", ".join(f"{n} pages ({fmt_bytes(n * 4096)}) of disk {serial}"
                         for n, serial in zip(pages, self.disks, strict=True))
        walk = sum(float(h.get("elapsed-ms", 0) or 0) for h in headers)
        self.journal.log(
            f"restorable map from the guest agent ({headers[0].get('source', '?')}): {what}, "
            f"taken in {time.monotonic() - t:.1f} s ({walk:.1f} ms of it in the guest's walk)")
        return True

    def _refresh(self) -> None:
        t = time.monotonic()
        texts, headers = self._maps()
        if self.stopped.is_set():
            return  # the switch-over came meanwhile
        fresh = [e for e in merged(texts).extents if e not in self._known]
        self.refreshes += 1
        if not fresh:
            return
        self._known.update(fresh)
        self.relays.feed_map(mapfile.RestorableMap(extents=fresh).to_text())
        pages = sum(n for _, _, n in fresh) // 4096
        walk = sum(float(h.get("elapsed-ms", 0) or 0) for h in headers)
        self.journal.log(f"map refresh {self.refreshes}: {pages} pages cached since "
                         f"({fmt_bytes(pages * 4096)}), taken in {time.monotonic() - t:.1f} s "
                         f"({walk:.1f} ms of it in the guest's walk)")
