"""What each `pcteleport lab …` subcommand does (console/cli.py only parses arguments)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

from pcteleport.lab import lifecycle, measure, status, wan
from pcteleport.lab.paths import LabPaths
from pcteleport.lab.topology import site


def _say(msg: str) -> None:
    print(f"lab: {msg}", flush=True)


def up(vms: Sequence[str] | None, profile: str | None) -> int:
    report = lifecycle.up(vms, profile, progress=_say)
    where = ", ".join(f"{n}@{s}" for n, s in report.vms.items())
    _say(f"up in {report.seconds:.1f} s: {where or 'no VMs'}; sites config {report.config}")
    return 0


def down() -> int:
    lifecycle.down(progress=_say)
    return 0


def show_status(as_json: bool, measure_wan: bool) -> int:
    st = status.collect(measure_wan=measure_wan)
    print(json.dumps(st, indent=2) if as_json else status.render(st))
    return 0 if st["up"] else 3


def ssh(site_name: str, command: Sequence[str]) -> int:
    paths = LabPaths.default()
    s = site(site_name)
    if not lifecycle.is_up(paths):
        from pcteleport.errors import PcteleportError

        raise PcteleportError("the lab is not up: run `pcteleport lab up` first")
    argv = [str(paths.ssh_wrapper)]
    if not command and sys.stdin.isatty():
        argv.append("-t")
    argv += [f"root@{s.mgmt_addr}", *command]
    sys.stdout.flush()
    os.execv(argv[0], argv)
    return 1  # not reached


def set_wan(profile: str) -> int:
    paths = LabPaths.default()
    st = wan.switch(paths, profile)
    lifecycle.write_config(paths, st.profile)
    m = measure.measure_wan()
    _say(f"WAN profile {st.profile} ({st.mode} delay): measured {m.rate_mbit:.1f} Mbit/s, "
         f"RTT {m.rtt_ms:.1f} ms ± {m.jitter_ms:.2f} ms")
    return 0
