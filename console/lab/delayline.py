"""The userspace half of the emulated WAN: holds every packet for the one-way delay.

Runs as its own process (`python -m pcteleport.lab.delayline`). It attaches to the persistent
tun device `wan0` of each site's network namespace; the kernel's tbf qdisc on each tun already
paces the site's outgoing packets to the profile's rate, so this process only delays: packets
read from one site's tun are written into the other's once their due time has come.

Efficiency: the tuns run a 64000-byte MTU, so 100 Mbit/s is ~200 packets a second each way;
reads are batched per wake-up (one timestamp per batch) and the loop sleeps in select() until
the next packet is due, with 1 µs timer slack so the hold time does not jitter.
SIGHUP re-reads the one-way delay from the state file (a live profile switch)."""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import os
import select
import signal
import struct
import sys
import time
from collections import deque
from pathlib import Path

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
PR_SET_TIMERSLACK = 29
MAX_BATCH = 256
RT_PRIORITY = 10
CLONE_NEWNET = 0x40000000


def open_tun(netns: str, ifname: str) -> int:
    """Attach to persistent tun `ifname` inside `netns` (the fd stays bound to that netns)."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open("/proc/thread-self/ns/net", "rb") as orig, open(f"/run/netns/{netns}", "rb") as ns:
        if libc.setns(ns.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {netns}")
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", ifname.encode(), IFF_TUN | IFF_NO_PI))
        finally:
            libc.setns(orig.fileno(), CLONE_NEWNET)
    return fd


def read_delay(state: Path) -> float:
    """One-way delay in seconds from the lab's WAN state file."""
    return float(json.loads(state.read_text())["one_way_ms"]) / 1000.0


class Stats:
    """Packets, bytes and how late packets left (release time - due time), written as JSON to
    a file at most once a second while traffic flows: `lab status` shows it."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.packets = 0
        self.bytes = 0
        self.late_max = 0.0
        self.late_sum = 0.0
        self.window = 0
        self.next_write = 0.0

    def flush(self, now: float) -> None:
        if self.path is None:
            return
        doc = {"t": time.time(), "packets": self.packets, "bytes": self.bytes,
               "late_max_us": round(self.late_max * 1e6, 1),
               "late_avg_us": round(self.late_sum / max(self.window, 1) * 1e6, 1),
               "window_packets": self.window}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc) + "\n")
        os.replace(tmp, self.path)
        self.late_max = self.late_sum = 0.0
        self.window = 0
        self.next_write = now + 1.0


def relay(fd_a: int, fd_b: int, delay: list[float], stats: Stats) -> None:
    """Forward a→b and b→a, each packet held `delay[0]` seconds. Never returns."""
    queues: dict[int, deque[tuple[float, bytes]]] = {fd_a: deque(), fd_b: deque()}
    out_of = {fd_a: fd_b, fd_b: fd_a}
    readers = [fd_a, fd_b]
    read, write, mono = os.read, os.write, time.monotonic
    while True:
        now = mono()
        next_due = None
        for src, q in queues.items():
            dst = out_of[src]
            while q and q[0][0] <= now:
                due, pkt = q.popleft()
                try:  # noqa: SIM105 (hot loop: a bare try is cheaper than suppress())
                    write(dst, pkt)
                except OSError:
                    pass  # the peer tun refused one packet (down, or a full queue): a WAN drops it
                late = now - due
                stats.late_sum += late
                if late > stats.late_max:
                    stats.late_max = late
                stats.window += 1
                stats.packets += 1
                stats.bytes += len(pkt)
            if q and (next_due is None or q[0][0] < next_due):
                next_due = q[0][0]
        if stats.window and now >= stats.next_write:
            stats.flush(now)
        timeout = None if next_due is None else max(0.0, next_due - now)
        ready, _, _ = select.select(readers, (), (), timeout)
        if not ready:
            continue
        due = mono() + delay[0]
        for src in ready:
            q = queues[src]
            for _ in range(MAX_BATCH):
                try:
                    q.append((due, read(src, 65536)))
                except BlockingIOError:
                    break


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="userspace WAN delay between two lab sites")
    ap.add_argument("--a", required=True, metavar="NETNS:IFACE")
    ap.add_argument("--b", required=True, metavar="NETNS:IFACE")
    ap.add_argument("--state", required=True, type=Path, help="JSON with one_way_ms")
    ap.add_argument("--pid-file", type=Path)
    ap.add_argument("--stats", type=Path, help="JSON file for packet counts and lateness")
    args = ap.parse_args(argv)

    ctypes.CDLL(None).prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
    # Real-time priority so busy guests (TCG eats every core) do not delay packet release; the
    # loop sleeps in select() between packets, and the kernel's RT throttling bounds it anyway.
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(RT_PRIORITY))
    except (OSError, AttributeError) as exc:
        print(f"delayline: no real-time priority ({exc}); jitter may grow under load",
              file=sys.stderr)
    fds = [open_tun(*spec.split(":", 1)) for spec in (args.a, args.b)]
    delay = [read_delay(args.state)]

    def reload(_sig: int, _frame: object) -> None:
        try:
            delay[0] = read_delay(args.state)
        except (OSError, ValueError, KeyError) as exc:
            print(f"delayline: keeping {delay[0] * 1000:.1f} ms: {exc}", file=sys.stderr)

    signal.signal(signal.SIGHUP, reload)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.pid_file:
        args.pid_file.write_text(f"{os.getpid()}\n")
    relay(fds[0], fds[1], delay, Stats(args.stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
