"""The benchmark's hands inside a lab guest: its command shell on the `pcteleport.shell`
virtio-serial port (console/guestimage/guestinit.py), reached through the port's unix socket on the
site host. The lab's sites are namespaces of this host, so the socket is a local path (the site's
/srv under `lab.host_dir` in the sites config); the benchmark therefore needs the lab."""

from __future__ import annotations

import base64
import json
import shlex
import time
from pathlib import Path
from typing import Any

from pcteleport.bench.scenario import GUEST_PROGRAMS
from pcteleport.errors import PcteleportError
from pcteleport.lab import guestshell
from pcteleport.lab.paths import SITE_SRV
from pcteleport.sites.config import SitesConfig

GUEST_DIR = "/tmp/pct-bench"  # tmpfs in the guest: the root and data disks are read-only


class LabGuest:
    def __init__(self, cfg: SitesConfig, vm: str) -> None:
        self.cfg = cfg
        self.vm = vm

    def socket(self, site: str) -> Path:
        sc = self.cfg.site(site)
        host_dir = sc.lab.get("host_dir")
        if not host_dir:
            raise PcteleportError(f"site {site} in {self.cfg.path} is not a lab site: "
                                  "`pcteleport bench` runs on the lab (`pcteleport lab up`)")
        rel = Path(sc.agent_socket_dir).relative_to(SITE_SRV)
        return Path(host_dir) / rel / f"{self.vm}.shell.sock"

    def run(self, site: str, script: str, timeout: float = 60) -> str:
        status, out = guestshell.run(self.socket(site), script, timeout)
        if status != 0:
            raise PcteleportError(f"in guest {self.vm} at {site}: `{script[:80]}` exited "
                                  f"{status}: {out[-400:]}")
        return out

    def install_programs(self, site: str) -> None:
        """Copy scenarios/guest/*.py into the guest (tmpfs), one file per shell call."""
        self.run(site, f"mkdir -p {GUEST_DIR}")
        for program in sorted(GUEST_PROGRAMS.glob("*.py")):
            data = base64.b64encode(program.read_bytes()).decode()
            self.run(site, f"echo {data} | base64 -d > {GUEST_DIR}/{program.name}")

    def start(self, site: str, name: str, argv: list[str]) -> int:
        """Start `python3 argv...` in the background writing JSON lines to GUEST_DIR/name.jsonl;
        returns its pid."""
        out = f"{GUEST_DIR}/{name}.jsonl"
        cmd = " ".join(shlex.quote(a) for a in argv)
        # One left running by an interrupted bench would compete with the new one (tpcc's
        # SQLite: "database is locked"). The guest has no pkill: look through /proc.
        self.run(site, "for p in /proc/[0-9]*; do case \"$(tr '\\0' ' ' < $p/cmdline "
                       f"2>/dev/null)\" in *'--out {out}'*) kill ${{p#/proc/}};; esac; done; "
                       "sleep 0.3; true")
        text = self.run(site, f"cd {GUEST_DIR} && rm -f {out} && "
                              f"python3 {cmd} --out {out} > {GUEST_DIR}/{name}.err 2>&1 &\n"
                              "echo $!")
        return int(text.split()[-1])

    def wait_rows(self, site: str, names: list[str], rows: int = 2,
                  timeout: float = 120) -> None:
        """Until every program wrote `rows` lines (Python starts slowly in a TCG guest)."""
        files = " ".join(f"{GUEST_DIR}/{n}.jsonl" for n in names)
        deadline = time.monotonic() + timeout
        while True:
            counts = self.run(site, f"for f in {files}; do cat $f 2>/dev/null | wc -l; done")
            if all(int(c) >= rows for c in counts.split()) and len(counts.split()) == len(names):
                return
            if time.monotonic() > deadline:
                errs = " ".join(self.errors(site, n) for n in names)
                raise PcteleportError(f"guest programs {', '.join(names)} of {self.vm} wrote "
                                      f"nothing within {timeout:.0f} s: {errs[-400:]}")
            time.sleep(1)

    def stop(self, site: str, pids: list[int]) -> None:
        if pids:
            self.run(site, f"kill {' '.join(map(str, pids))} 2>/dev/null; sleep 0.5; true")

    def rows(self, site: str, name: str) -> list[dict[str, Any]]:
        text = self.run(site, f"cat {GUEST_DIR}/{name}.jsonl 2>/dev/null; true", timeout=120)
        out = []
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line cut by the kill
        return out

    def errors(self, site: str, name: str) -> str:
        return self.run(site, f"cat {GUEST_DIR}/{name}.err 2>/dev/null; true")

    def clock_offset(self, site: str) -> float:
        """Host time minus guest time, in seconds. The guest prints its clock last thing before
        the shell's done line, so the host's receipt time is later by only the port's latency."""
        # The shell's own clock (busybox ash and bash have $EPOCHREALTIME), not python3:
        # starting an interpreter costs a TCG guest's vCPU most of a second.
        out = self.run(site, "echo $EPOCHREALTIME")
        received = time.time()
        try:
            return received - float(out.split()[-1])
        except (ValueError, IndexError):  # a shell without it
            out = self.run(site, "python3 -c 'import time; print(repr(time.time()))'")
            return time.time() - float(out.split()[-1])
