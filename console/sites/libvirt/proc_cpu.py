"""CPU seconds of a migration's processes on a site host, per thread, read from /proc.

Why /proc and not libvirt: libvirt's CPU figures (virDomainGetCPUStats, the domain stats'
cpu.time and vcpu.N.time) cover the QEMU process as a whole and each vCPU; what is left over
("the emulator") lumps QEMU's migration threads together with every other helper thread, and
libvirt names none of them. /proc/<pid>/task/<tid>/stat has each thread's user and system time
and its name: libvirt starts QEMU with `-name ...,debug-threads=on`, so the migration's threads
("mig/src/main" on QEMU >= 9, "live_migration" before; multifd "mig/src/send_N", ...) can be
told from the guest's vCPUs ("CPU 0/TCG"), which are the guest's own work and never counted.

Why a watcher and not one reading before and one after: the source QEMU is gone when migrate3
returns (libvirt ends it once the destination runs). So `pcteleport qemu-cpu watch` runs at each
site from before the migration, reads the VM's QEMU threads every POLL_S, and answers "report"
on stdin with each thread's first and last reading; a thread that ended keeps its last one (at
most POLL_S of its CPU is missed).

Site-host side (`watch`) and console side (`QemuCpuWatch`, `process_cpu_s`) live here together,
as ramcheck.py does: the protocol between them is in one place.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pcteleport.errors import PcteleportError

POLL_S = 0.1
QEMU_PID_DIR = Path("/run/libvirt/qemu")
#: a vCPU thread: the guest's own work (QEMU's "CPU %d/%s" with its accelerator's name)
VCPU = re.compile(r"^CPU \d+/\w+$")
#: QEMU's migration threads (migration/migration.h, QEMU >= 9) and their older names
SOURCE_THREADS = re.compile(r"^(mig/src/.*|live_migration|multifdsend_\d+|return path)$")
DEST_THREADS = re.compile(r"^(mig/dst/.*|multifdrecv_\d+|postcopy/.*)$")
MAIN = "main"  # how the main thread is named here (its own name is the process's: qemu-system-x)


class ProcCpuError(PcteleportError):
    pass


# --- pure: parsing /proc and choosing threads ----------------------------------------------


@dataclass(frozen=True)
class ThreadCpu:
    tid: int
    name: str
    cpu_s: float  # utime + stime


def parse_stat(line: str, clk_tck: int) -> ThreadCpu:
    """One /proc/<pid>[/task/<tid>]/stat line. The name sits in parentheses and may hold
    spaces or parentheses itself ("CPU 0/TCG"), so fields are counted after the last ')':
    utime and stime are fields 14 and 15 of proc(5), in clock ticks."""
    head, sep, rest = line.rpartition(")")
    tid_text, paren, name = head.partition(" (")
    fields = rest.split()
    if not sep or not paren or len(fields) < 13:
        raise ProcCpuError(f"not a /proc stat line: {line[:80]!r}")
    try:
        return ThreadCpu(int(tid_text), name, (int(fields[11]) + int(fields[12])) / clk_tck)
    except ValueError:
        raise ProcCpuError(f"not a /proc stat line: {line[:80]!r}") from None


def read_threads(pid: int, proc: Path = Path("/proc")) -> list[ThreadCpu]:
    """Every thread of process `pid` now (the main thread named MAIN); [] once it is gone."""
    clk = os.sysconf("SC_CLK_TCK")
    out = []
    try:
        tasks = list((proc / str(pid) / "task").iterdir())
    except OSError:
        return []
    for task in tasks:
        try:
            t = parse_stat((task / "stat").read_text(), clk)
        except (OSError, ProcCpuError):
            continue  # ended between the listing and the read
        out.append(ThreadCpu(t.tid, MAIN, t.cpu_s) if t.tid == pid else t)
    return out


def counted(name: str, side: str) -> bool:
    """Is this QEMU thread the migration's work at `side` ("source" or "destination")?

    Migration threads count at their side (on QEMU 10: mig/src/main, mig/src/return,
    mig/src/tls, mig/src/send_N; mig/dst/recv_N). The main thread counts at the destination
    only: the incoming precopy stream is loaded there (a coroutine of the main loop), before the
    guest runs. At the source it runs the guest's device I/O for as long as the migration lasts
    (a lab run charged a 24 s encrypted stock run 0.64 s there against 0.11 s for its 6 s clear
    twin), beside the NBD client of the disks' copy, whose share is small (teleport's tunnel-in
    carrying the same bytes used 0.02 s). vCPUs never count (the guest's work), nor QEMU's other
    helpers (I/O workers, RCU, the monitor's I/O thread)."""
    if VCPU.match(name):
        return False
    if name == MAIN:
        return side == "destination"
    return bool((SOURCE_THREADS if side == "source" else DEST_THREADS).match(name))


@dataclass(frozen=True)
class ThreadSpan:
    """A thread's CPU over a watch: its first and last reading; `born`: it appeared after the
    watch's first reading (its whole life is in the window, so its start counts from 0)."""

    tid: int
    name: str
    first_s: float
    last_s: float
    born: bool

    @property
    def used_s(self) -> float:
        return self.last_s - (0.0 if self.born else self.first_s)


def spans_used(spans: list[ThreadSpan], side: str) -> dict[str, float]:
    """CPU seconds per counted thread name over the watch (threads of one name summed)."""
    out: dict[str, float] = {}
    for s in spans:
        if counted(s.name, side):
            out[s.name] = round(out.get(s.name, 0.0) + max(0.0, s.used_s), 3)
    return out


# --- site host: `pcteleport qemu-cpu watch` ------------------------------------------------


def qemu_pid(vm: str, pid_dir: Path = QEMU_PID_DIR) -> int | None:
    try:
        pid = int((pid_dir / f"{vm}.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


class Watch:
    """Readings of one process's threads, poll after poll (no I/O but `poll`'s reads)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.spans: dict[int, ThreadSpan] = {}
        self.polls = 0
        self.ended = False

    def poll(self, threads: list[ThreadCpu]) -> None:
        if not threads:
            self.ended = self.polls > 0
            return
        for t in threads:
            old = self.spans.get(t.tid)
            self.spans[t.tid] = (ThreadSpan(t.tid, t.name, t.cpu_s, t.cpu_s, self.polls > 0)
                                 if old is None else
                                 ThreadSpan(t.tid, t.name, old.first_s, t.cpu_s, old.born))
        self.polls += 1

    def report(self) -> dict[str, Any]:
        return {"event": "report", "pid": self.pid, "ended": self.ended,
                "threads": [[s.tid, s.name, s.first_s, s.last_s, s.born]
                            for s in self.spans.values()]}


def watch(vm: str, wait_s: float = 600.0, pid_dir: Path = QEMU_PID_DIR) -> int:
    """Find the VM's QEMU (waiting up to `wait_s` for it to start: at the destination it starts
    with the migration), say "ready", poll its threads; answer each "report" line on stdin;
    end when stdin ends."""
    requests: list[str] = []
    eof = threading.Event()

    def read_stdin() -> None:
        for line in sys.stdin:
            requests.append(line.strip())
        eof.set()

    def say(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    threading.Thread(target=read_stdin, daemon=True).start()
    deadline = time.monotonic() + wait_s
    w: Watch | None = None
    while not eof.is_set():
        if w is None:
            pid = qemu_pid(vm, pid_dir)
            if pid is not None:
                w = Watch(pid)
            elif time.monotonic() > deadline:
                say({"event": "error", "message": f"no QEMU of VM {vm} started within "
                     f"{wait_s:.0f} s"})
                return 1
        if w is not None and not w.ended:
            w.poll(read_threads(w.pid))
            if w.polls == 1:
                say({"event": "ready", "pid": w.pid})
        while requests:
            if requests.pop(0) == "report":
                say(w.report() if w is not None else {"event": "report", "pid": None,
                                                      "ended": False, "threads": []})
        eof.wait(POLL_S)
    return 0


# --- console side --------------------------------------------------------------------------


class QemuCpuWatch:
    """One `qemu-cpu watch` on a site host, over SSH: started before the migration."""

    def __init__(self, site: Any, vm: str, side: str) -> None:  # site: SiteRuntime
        self.site, self.vm, self.side = site, vm, side
        argv = [*site.config.relay_command, "qemu-cpu", "watch", "--vm", vm]
        from pcteleport.sites.remote import JsonLines  # here: site hosts need no SSH client

        self._proc = JsonLines(site.host, argv, f"QEMU's CPU watch at {site.name}", ProcCpuError)

    def wait(self, event: str, timeout: float) -> dict[str, Any]:
        return self._proc.wait(event, timeout)

    def report(self, timeout: float = 20.0) -> list[ThreadSpan]:
        self._proc.send("report\n")
        ev = self._proc.wait("report", timeout)
        return [ThreadSpan(int(t[0]), str(t[1]), float(t[2]), float(t[3]), bool(t[4]))
                for t in ev.get("threads", [])]

    def close(self) -> None:
        self._proc.close()


def process_cpu_s(site: Any, pid: int) -> float:
    """A process's CPU seconds so far (every thread's, ended ones too), read once at `site`."""
    res = site.host.run(["sh", "-c", f"getconf CLK_TCK && cat /proc/{int(pid)}/stat"],
                        timeout=30)
    lines = res.stdout.splitlines()
    if res.status != 0 or len(lines) < 2 or not lines[0].strip().isdigit():
        raise ProcCpuError(f"could not read the CPU of process {pid} at {site.name}: "
                           f"{res.stderr.strip() or res.status}")
    return parse_stat(lines[1], int(lines[0])).cpu_s
