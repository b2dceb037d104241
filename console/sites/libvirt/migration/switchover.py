"""The switch-over sized by the WAN, for teleport: on QEMU >= 8.2 by the rate QEMU assumes, on
older QEMU by the downtime limit (issue 14).

QEMU stops the guest when what remains fits the downtime limit at the bandwidth it assumes. It
measures that bandwidth as the rate it writes into its migration socket — for teleport, the
local send relay — and a run of teleported pages passes the relay at hundreds of MiB/s, so QEMU
would stop the guest with far more left than the WAN carries within the limit (tpcc on 7.2:
9.1 s of downtime against stock's 2.4 s). `avail-switchover-bandwidth` (QEMU 8.2) replaces
that measurement in the decision. We keep it at the WAN's own rate: a byte of the remainder
costs a byte on the WAN. The remainder at the end is mostly pages dirtied since they were sent,
which no map covers; how well they compress is not how well the first pass's pages did (web, a
first pass at 4.9 guest bytes per WAN byte sized the switch-over at 58 MiB/s, the 49 MB left
crossed at ~22 MB/s: 2.5 s of downtime against a 1 s limit, stock's 1.5 s). A remainder that
compresses or holds restorable pages drains faster than that, never slower: the downtime can
only come out shorter than the limit QEMU planned for.

libvirt (11.3) has no typed migration parameter for it, so it goes through libvirt's QEMU
monitor passthrough, which libvirt allows during a migration job (it marks the domain tainted).

QEMU < 8.2 (Debian 12's 7.2) has no such parameter. Its decision is remaining <= qemu_rate x
downtime_limit, with qemu_rate its own measurement (over the last 100 ms). ScaledDowntime sets
the downtime limit, through libvirt's own virDomainMigrateSetMaxDowntime (allowed during a
migration job), to limit x drain / qemu_rate: the threshold becomes drain x limit, the same
decision sized by the WAN (web on 7.2.22: 540 and 408 ms of downtime against 1814 and 921 ms
without, docs/results.md). The operator's limit is given back after a failed run.
"""

from __future__ import annotations

import json
from collections import deque

import libvirt
import libvirt_qemu

from pcteleport.teleport import events

PARAM = "avail-switchover-bandwidth"
WINDOW = 5  # relay stats (one a second) the estimate looks back over
CHANGE = 0.05  # tell QEMU again only when the rate moved by more than this share
FLOOR_MS = 1  # the scaled downtime limit's floor: QEMU still stops once the rest is ~nothing


def supported(dom: libvirt.virDomain) -> bool:
    """Does this domain's QEMU take the parameter (8.2 and later)?"""
    try:
        reply = _qmp(dom, "query-migrate-parameters")
    except libvirt.libvirtError:
        return False
    return PARAM in reply.get("return", {})


def set_rate(dom: libvirt.virDomain, bytes_per_s: int) -> None:
    reply = _qmp(dom, "migrate-set-parameters", {PARAM: bytes_per_s})
    if "error" in reply:
        raise libvirt.libvirtError(f"QEMU refused {PARAM}: {reply['error'].get('desc')}")


def _qmp(dom: libvirt.virDomain, command: str, arguments: dict | None = None) -> dict:
    cmd: dict[str, object] = {"execute": command}
    if arguments:
        cmd["arguments"] = arguments
    return json.loads(libvirt_qemu.qemuMonitorCommand(dom, json.dumps(cmd), 0))


class DrainRate:
    """The rate (guest bytes/s) the remainder is sized at: the WAN's rate (the best the send
    relay showed lately, or the measured link's if higher), a guest byte per WAN byte."""

    def __init__(self, link_bytes_per_s: float | None = None) -> None:
        self.link = link_bytes_per_s or 0.0
        self.window: deque[events.Stats] = deque(maxlen=WINDOW + 1)
        self.applied: float | None = None

    def update(self, stats: events.Stats) -> float | None:
        """The new estimate after a stats event (None until the WAN has shown a rate)."""
        self.window.append(stats)
        wan_rate = max(s.wan_rate_bps for s in self.window) / 8
        rate = max(self.link, wan_rate)
        return rate if rate > 0 else None

    def worth_telling(self, rate: float) -> bool:
        """Only a change QEMU's decision would notice (and not a monitor call a second)."""
        return self.applied is None or abs(rate - self.applied) > CHANGE * self.applied


def scaled_limit_ms(limit_ms: int, drain: float, qemu_rate: float) -> int:
    """The downtime limit that turns QEMU's threshold qemu_rate x limit' into drain x limit:
    never above the operator's limit (a WAN that drains faster than QEMU writes does not
    allow a longer pause), never below FLOOR_MS."""
    if drain <= 0 or qemu_rate <= 0:
        return limit_ms  # nothing measured: QEMU decides as it would
    return max(FLOOR_MS, min(limit_ms, int(limit_ms * drain / qemu_rate)))


class ScaledDowntime:
    """QEMU < 8.2: the downtime limit scaled so that its switch-over is sized by the WAN.

    QEMU's rate is libvirt's memory bandwidth (QEMU's `mbps`, over its last 100 ms), sampled
    once a second. The scale uses the highest of the last WINDOW samples: a run of teleported
    pages raises QEMU's rate for a moment, and a sample between the runs must not let the next
    one stop the guest with more left than the WAN drains within the limit."""

    def __init__(self, limit_ms: int) -> None:
        self.limit_ms = limit_ms  # the operator's, given back after the run
        self.qemu_rates: deque[float] = deque(maxlen=WINDOW)
        self.applied: int | None = None  # the limit QEMU holds now, if we set one

    def update(self, drain: float | None, memory_bps: float) -> int | None:
        """The limit (ms) for this sample, or None until both rates are known."""
        if memory_bps > 0:  # 0 while only the disks are copied
            self.qemu_rates.append(memory_bps)
        if drain is None or not self.qemu_rates:
            return None
        return scaled_limit_ms(self.limit_ms, drain, max(self.qemu_rates))

    def worth_telling(self, limit_ms: int) -> bool:
        return self.applied is None or abs(limit_ms - self.applied) > max(1, CHANGE * self.applied)
