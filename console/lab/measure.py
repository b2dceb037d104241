"""Measuring the lab WAN as an operator would: a short ping and a short TCP transfer between the
sites' WAN addresses (tokyo -> osaka), plus the delay line's CPU use."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import statistics
import struct
import threading
import time
from dataclasses import asdict, dataclass

from pcteleport.errors import PcteleportError
from pcteleport.lab import shell
from pcteleport.lab.topology import WAN_IFACE, Site, sites

_RTT = re.compile(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms")


@dataclass(frozen=True)
class Rtt:
    median_ms: float
    avg_ms: float
    mdev_ms: float  # ping's own figure: a standard deviation, blown up by one hiccup
    jitter_ms: float  # 95th percentile of |RTT - median|: the emulator's steadiness
    samples: int


@dataclass(frozen=True)
class WanMeasurement:
    rtt_ms: float  # median
    jitter_ms: float  # p95 of |RTT - median|
    mdev_ms: float
    rate_mbit: float
    transfer_s: float

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in asdict(self).items()}


_TIME = re.compile(r"time=([\d.]+) ms")


def ping(src: Site, dst: Site, count: int = 50, interval: float = 0.01) -> Rtt:
    out = shell.run(shell.in_netns(src.netns, [
        "ping", "-n", "-c", str(count), "-i", str(interval), "-W", "2", dst.wan_addr,
    ]), check=False, timeout=30 + count * interval)
    rtts = sorted(float(t) for t in _TIME.findall(out.stdout))
    m = _RTT.search(out.stdout)
    if not rtts or not m:
        raise PcteleportError(
            f"no ping reply from {dst.name} over the WAN: run `pcteleport lab up`"
        )
    median = statistics.median(rtts)
    dev = sorted(abs(r - median) for r in rtts)
    p95 = dev[min(len(dev) - 1, int(len(dev) * 0.95))]
    return Rtt(median, float(m.group(2)), float(m.group(4)), p95, len(rtts))


def _bytes_received(conn: socket.socket) -> int:
    """tcpi_bytes_received from TCP_INFO: what the kernel received, however late the reader."""
    info = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return struct.unpack_from("Q", info, _TCPI_BYTES_RECEIVED)[0]


_TCPI_BYTES_RECEIVED = 128  # 8 bytes of u8 fields, 24 u32, then pacing, max_pacing, bytes_acked


def tcp_rate(src: Site, dst: Site, seconds: float = 2.0, warmup: float = 0.5) -> float:
    """Goodput in Mbit/s of one TCP stream src -> dst after `warmup`, from the receiving
    kernel's byte counter sampled at both ends of the window (a reader or sender that the
    scheduler delays cannot skew it)."""
    with shell.netns(dst.netns):
        server = socket.create_server((dst.wan_addr, 0))
    port = server.getsockname()[1]
    with shell.netns(src.netns):
        client = socket.socket()
    client.settimeout(10)
    server.settimeout(10)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def receive() -> None:
        conn, _ = server.accept()
        accepted.append(conn)
        buf = bytearray(1 << 20)
        # The sender resets the connection when its time is up.
        with contextlib.suppress(OSError):
            while conn.recv_into(buf):
                pass

    def send() -> None:
        chunk = os.urandom(1 << 20)
        with contextlib.suppress(OSError):
            while not stop.is_set():
                client.sendall(chunk)

    rx = threading.Thread(target=receive, daemon=True)
    rx.start()
    client.connect((dst.wan_addr, port))
    tx = threading.Thread(target=send, daemon=True)
    tx.start()
    try:
        deadline = time.monotonic() + 10
        while not accepted and time.monotonic() < deadline:
            time.sleep(0.01)
        if not accepted:
            raise PcteleportError(f"no TCP connection reached {dst.name}: run `pcteleport lab up`")
        time.sleep(warmup)
        ta, ba = time.monotonic(), _bytes_received(accepted[0])
        time.sleep(max(0.5, seconds - warmup))
        tb, bb = time.monotonic(), _bytes_received(accepted[0])
    finally:
        stop.set()
        # Reset rather than close: a graceful close would keep draining megabytes of send
        # buffer through the shaped link, and the next ping would measure that queue.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()
        tx.join(timeout=10)
        rx.join(timeout=10)
        for conn in accepted:
            conn.close()
        server.close()
        _wait_queue_empty(src)
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
    return WanMeasurement(rtt.median_ms, rtt.jitter_ms, rtt.mdev_ms, rate,
                          time.monotonic() - start)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
