"""Measuring the lab WAN as an operator would: a short ping and a short TCP transfer between the
sites' WAN addresses (tokyo -> osaka), plus the delay line's CPU use."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import struct
import threading
import time
from dataclasses import asdict, dataclass

from console.errors import PcteleportError
from console.sites.lab import shell
from console.sites.lab.topology import WAN_IFACE, Site, sites

_RTT = re.compile(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms")


@dataclass(frozen=True)
class Rtt:
    min_ms: float
    avg_ms: float
    max_ms: float
    mdev_ms: float  # ping's jitter figure


@dataclass(frozen=True)
class WanMeasurement:
    rtt_ms: float
    jitter_ms: float
    rate_mbit: float
    transfer_s: float

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in asdict(self).items()}


def ping(src: Site, dst: Site, count: int = 10, interval: float = 0.05) -> Rtt:
    out = shell.run(shell.in_netns(src.netns, [
        "ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", "2", dst.wan_addr,
    ]), check=False, timeout=30 + count * interval)
    m = _RTT.search(out.stdout)
    if not m:
        raise PcteleportError(
            f"no ping reply from {dst.name} over the WAN: run `pcteleport lab up`"
        )
    return Rtt(*(float(g) for g in m.groups()))


def tcp_rate(src: Site, dst: Site, seconds: float = 2.0, warmup: float = 0.5) -> float:
    """Goodput in Mbit/s of one TCP stream src -> dst, counted at the receiver after `warmup`."""
    with shell.netns(dst.netns):
        server = socket.create_server((dst.wan_addr, 0))
    port = server.getsockname()[1]
    with shell.netns(src.netns):
        client = socket.socket()
    client.settimeout(10)
    server.settimeout(10)
    marks: list[tuple[float, int]] = []

    def receive() -> None:
        conn, _ = server.accept()
        with conn:
            buf = bytearray(1 << 20)
            total = 0
            # The sender resets the connection when its time is up.
            with contextlib.suppress(ConnectionResetError):
                while n := conn.recv_into(buf):
                    total += n
                    marks.append((time.monotonic(), total))

    rx = threading.Thread(target=receive, daemon=True)
    rx.start()
    try:
        client.connect((dst.wan_addr, port))
        chunk = os.urandom(1 << 20)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            client.sendall(chunk)
    finally:
        # Reset rather than close: a graceful close would keep draining megabytes of send
        # buffer through the shaped link, and the next ping would measure that queue.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        rx.join(timeout=seconds + 10)
        server.close()
        _wait_queue_empty(src)
    if not marks:
        raise PcteleportError(f"no TCP data reached {dst.name}: run `pcteleport lab up`")
    t0 = marks[0][0] + warmup
    window = [(t, b) for t, b in marks if t >= t0]
    if len(window) < 2:
        raise PcteleportError("the WAN transfer was too short to measure: retry `lab status`")
    (ta, ba), (tb, bb) = window[0], window[-1]
    return (bb - ba) * 8 / (tb - ta) / 1e6


def _wait_queue_empty(s: Site, timeout: float = 2.0) -> None:
    """Wait until the shaper at `s` has sent what it queued (the next probe must see an idle
    link)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = shell.run(shell.in_netns(s.netns, ["tc", "-s", "qdisc", "show", "dev", WAN_IFACE]),
                        check=False).stdout
        if "backlog 0b" in out or "backlog" not in out:
            return
        time.sleep(0.02)


def measure_wan(seconds: float = 2.0) -> WanMeasurement:
    a, b = sites()
    rtt = ping(a, b)
    start = time.monotonic()
    rate = tcp_rate(a, b, seconds)
    return WanMeasurement(rtt.avg_ms, rtt.mdev_ms, rate, time.monotonic() - start)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
