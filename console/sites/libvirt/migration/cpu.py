"""What a migration costs in CPU at each site, when asked (MigrationRequest.measure_cpu):
QEMU's migration threads at both ends (sites/libvirt/proc_cpu.py says which threads and why
/proc), and in teleport its relays and disk tunnel ends, each from when it listened (their
start-up is not the migration's). A part that cannot be measured is named, never guessed."""

from __future__ import annotations

from pcteleport.errors import PcteleportError
from pcteleport.records import ProcessCpu
from pcteleport.sites.libvirt.migration.modes import Prepared
from pcteleport.sites.libvirt.migration.plan import Plan
from pcteleport.sites.libvirt.proc_cpu import QemuCpuWatch, process_cpu_s, spans_used
from pcteleport.sites.libvirt.relays import RelayEnd
from pcteleport.teleport import events

SIDES = ("source", "destination")


class CpuMeter:
    """Started before the migration, read right after it (before the tunnel ends stop and
    while the destination QEMU has done little but load the VM)."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.watches: dict[str, QemuCpuWatch] = {}
        self.missing: list[tuple[str, str]] = []  # (side, what and why)

    def start(self) -> None:
        for side, site in zip(SIDES, (self.plan.src, self.plan.dst), strict=True):
            try:
                self.watches[side] = QemuCpuWatch(site, self.plan.vm, side)
            except (PcteleportError, OSError) as exc:  # measuring never fails the migration
                self.missing.append((side, f"QEMU's CPU watch at {site.name}: {exc}"))

    def ready(self, timeout: float = 30.0) -> None:
        """The source's first reading taken: only then may its QEMU start migrating (the
        destination's QEMU starts with the migration; its watcher finds it then)."""
        w = self.watches.get("source")
        if w is None:
            return
        try:
            w.wait("ready", timeout)
        except PcteleportError as exc:
            self.missing.append(("source", str(exc)))
            self._drop("source")

    def qemu_and_tunnels(self, prepared: Prepared) -> list[ProcessCpu]:
        out = []
        for side in SIDES:
            w = self.watches.get(side)
            if w is None:
                continue
            try:
                threads = spans_used(w.report(), side)
            except PcteleportError as exc:
                self.missing.append((side, str(exc)))
                continue
            if not threads:
                self.missing.append((side, f"QEMU at {w.site.name}: no migration thread "
                                                   "seen"))
                continue
            out.append(ProcessCpu(side, w.site.name, "qemu", round(sum(threads.values()), 3),
                                  threads))
        if prepared.tunnel is not None:
            for side, end in zip(SIDES, (prepared.tunnel.tin, prepared.tunnel.tout),
                                 strict=True):
                out += self._running_end(side, end)
        return out

    def _running_end(self, side: str, end: RelayEnd) -> list[ProcessCpu]:
        """A tunnel end runs until stopped and never sums itself up: read its /proc."""
        listening = end.event(events.Listening)
        if listening is None:
            self.missing.append((side, f"{end.role} at {end.site.name}: it never listened"))
            return []
        try:
            total = process_cpu_s(end.site, listening.pid)
        except PcteleportError as exc:
            self.missing.append((side, f"{end.role} at {end.site.name}: {exc}"))
            return []
        return [ProcessCpu(side, end.site.name, end.role,
                           round(max(0.0, total - listening.cpu_s), 3))]

    def relays(self, prepared: Prepared) -> list[ProcessCpu]:
        """The relays' own figures: their summary's CPU, less what they had when listening."""
        if prepared.relays is None:
            return []
        out = []
        for side, end in zip(SIDES, (prepared.relays.send, prepared.relays.recv), strict=True):
            summary, listening = end.event(events.Summary), end.event(events.Listening)
            if summary is None or summary.cpu_s <= 0:
                self.missing.append((side, f"relay {end.role} at {end.site.name}: no CPU "
                                                   "figure"))
                continue
            start = listening.cpu_s if listening is not None else 0.0
            out.append(ProcessCpu(side, end.site.name, f"relay {end.role}",
                                  round(max(0.0, summary.cpu_s - start), 3)))
        return out

    def _drop(self, side: str) -> None:
        w = self.watches.pop(side, None)
        if w is not None:
            w.close()

    def close(self) -> None:
        for side in list(self.watches):
            self._drop(side)
