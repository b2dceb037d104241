"""Shaping the lab WAN: a profile is a rate and an RTT, applied live.

Userspace mode (this host: no netem): tbf on each site's tun paces that site's outgoing packets
to the rate, and the delay line holds each packet for RTT/2. Netem mode: netem on each veth end
does both. The chosen mode and profile live in the state dir's wan.json."""

from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from pcteleport.errors import PcteleportError
from pcteleport.lab import network, shell
from pcteleport.lab.paths import LabPaths
from pcteleport.lab.topology import WAN_IFACE, WAN_MTU, sites
from pcteleport.lab.wanprofiles import WanProfile, profile

MODES = ("userspace", "netem")


@dataclass(frozen=True)
class WanState:
    mode: str
    profile: str
    one_way_ms: float


def load_state(paths: LabPaths) -> WanState | None:
    try:
        d = json.loads(paths.wan_state.read_text())
        return WanState(d["mode"], d["profile"], float(d["one_way_ms"]))
    except (OSError, ValueError, KeyError):
        return None


def _save_state(paths: LabPaths, st: WanState) -> None:
    tmp = paths.wan_state.with_suffix(".tmp")
    tmp.write_text(json.dumps(st.__dict__) + "\n")
    os.replace(tmp, paths.wan_state)


def choose_mode() -> str:
    forced = os.environ.get("PCTELEPORT_LAB_WAN")
    if forced:
        if forced not in MODES:
            raise PcteleportError(f"PCTELEPORT_LAB_WAN={forced}: use one of {', '.join(MODES)}")
        return forced
    return "netem" if network.kernel_has_netem() else "userspace"


def tbf_args(p: WanProfile) -> list[str]:
    # burst must hold a whole 64000-byte frame; limit ~ one bandwidth-delay product of queue,
    # enough for TCP to fill the link without drops.
    burst = max(2 * WAN_MTU, int(p.rate_bytes / 250))
    limit = max(4 * WAN_MTU, int(p.rate_bytes * p.rtt_ms / 1000))
    return ["tbf", "rate", f"{p.rate_mbit:g}mbit", "burst", str(burst), "limit", str(limit)]


def netem_args(p: WanProfile) -> list[str]:
    packets = max(1000, int(p.rate_bytes * p.rtt_ms / 1000 / 1500) * 2)
    return ["netem", "delay", f"{p.one_way_ms:g}ms", "rate", f"{p.rate_mbit:g}mbit",
            "limit", str(packets)]


def apply(paths: LabPaths, mode: str, name: str) -> WanState:
    """Shape both directions to profile `name` (live; queued packets keep their due times)."""
    p = profile(name)
    qdisc = tbf_args(p) if mode == "userspace" else netem_args(p)
    for s in sites():
        try:
            shell.run(["ip", "netns", "exec", s.netns, "tc", "qdisc", "replace", "dev",
                       WAN_IFACE, "root", *qdisc])
        except PcteleportError as exc:
            if mode == "netem" and "unknown" in str(exc):
                raise PcteleportError("this kernel has no netem: unset PCTELEPORT_LAB_WAN (the "
                                      "lab then uses its userspace delay line)") from exc
            raise
    st = WanState(mode, p.name, p.one_way_ms)
    _save_state(paths, st)
    if mode == "userspace":
        pid = shell.read_pid(paths.delay_pid)
        if pid is not None:
            os.kill(pid, signal.SIGHUP)
    return st


def ensure_delay_line(paths: LabPaths) -> int:
    """Start the delay line if it is not running; return its pid."""
    pid = shell.read_pid(paths.delay_pid)
    if pid is not None:
        return pid
    a, b = sites()
    cmd = [sys.executable, "-m", "pcteleport.lab.delayline",
           "--a", f"{a.netns}:{WAN_IFACE}", "--b", f"{b.netns}:{WAN_IFACE}",
           "--state", str(paths.wan_state), "--pid-file", str(paths.delay_pid),
           "--stats", str(paths.delay_stats)]
    paths.delay_pid.unlink(missing_ok=True)
    proc = shell.spawn_detached(cmd, paths.delay_log)
    shell.wait_for(lambda: shell.read_pid(paths.delay_pid) == proc.pid or proc.poll() is not None,
                   10, "the WAN delay line to start")
    if proc.poll() is not None:
        tail = paths.delay_log.read_text().strip().splitlines()[-1:] or ["no output"]
        raise PcteleportError(f"the WAN delay line exited: {tail[0]} (see {paths.delay_log})")
    return proc.pid


def stop_delay_line(paths: LabPaths) -> None:
    pid = shell.read_pid(paths.delay_pid)
    if pid is not None:
        shell.stop_pid(pid)
    paths.delay_pid.unlink(missing_ok=True)
    paths.delay_stats.unlink(missing_ok=True)


def ensure(paths: LabPaths, profile_name: str | None = None) -> WanState:
    """Bring the WAN up in the recorded (or detected) mode; keep the current profile unless
    `profile_name` is given."""
    old = load_state(paths)
    mode = old.mode if old else choose_mode()
    network.ensure_wan("tun" if mode == "userspace" else "veth")
    name = profile_name or (old.profile if old else "default")
    if old is None or old.profile != name or not _qdisc_matches(mode, name):
        st = apply(paths, mode, name)
    else:
        st = old
    if mode == "userspace":
        ensure_delay_line(paths)
    return st


def _qdisc_matches(mode: str, name: str) -> bool:
    p = profile(name)
    want = "tbf" if mode == "userspace" else "netem"
    for s in sites():
        out = shell.run(["ip", "netns", "exec", s.netns, "tc", "qdisc", "show", "dev", WAN_IFACE],
                        check=False).stdout
        if f"qdisc {want}" not in out or _rate_token(p) not in out:
            return False
    return True


def _rate_token(p: WanProfile) -> str:
    if p.rate_mbit >= 1000:
        return f"rate {p.rate_mbit / 1000:g}Gbit"
    return f"rate {p.rate_mbit:g}Mbit"


def use_profile(paths: LabPaths, name: str) -> None:
    """Switch the live WAN to profile `name` unless it already has it."""
    st = load_state(paths)
    if st is None or st.profile != name:
        switch(paths, name)


def switch(paths: LabPaths, name: str) -> WanState:
    st = load_state(paths)
    if st is None or not Path(f"/run/netns/{sites()[0].netns}").exists():
        raise PcteleportError("the lab is not up: run `pcteleport lab up` first")
    with shell.locked(paths.lock, "`lab wan`"):
        return apply(paths, st.mode, name)


def delay_stats(paths: LabPaths) -> dict[str, float] | None:
    """The delay line's last stats (packets, bytes, lateness over its last second of traffic)."""
    try:
        return json.loads(paths.delay_stats.read_text())
    except (OSError, ValueError):
        return None
