"""Faults injected mid-migration on the real lab (issue 16 item 3): the send relay killed, the
destination QEMU killed, the WAN down for 5 s and for 60 s, Ctrl-C of `pcteleport migrate` while
it copies the disks and while it copies the memory, the guest agent killed before the checks at
the destination, the destination's libvirtd killed. For each: where the VM runs afterwards (the
record and both sites' libvirt), that the guest is intact (it answers on its shell and its
agent; where the migration went through, the product's own checks passed), that nothing is left
behind (no domain or overlay at the destination after a failure, no relay of this lab at either
site) and the one line the operator got names the fault.

A lab instance of its own ("fl"), one small web VM, the fast WAN profile; bandwidth caps keep a
migration in the phase a fault is meant for."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pcteleport.records import MigrationRecord, MigrationSample, Mode, Result
from tests.conftest import lab_backend, require

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.slow]

INSTANCE = "fl"
VM = "web-small"
ROOT = Path(__file__).resolve().parent.parent
MiB = 2**20


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    require(os.geteuid() == 0, "the lab needs root")
    require(shutil.which("qemu-system-x86_64") is not None, "QEMU is not installed")
    require(shutil.which("nft") is not None, "nft is not installed (the WAN faults drop packets)")
    with lab_backend(INSTANCE, VM, tmp_path_factory.mktemp("records")) as b:
        try:
            yield b
        finally:
            wan_up(None)  # (a failed WAN test's table goes before the lab does)


@pytest.fixture
def at_tokyo(backend) -> Iterator:
    """Every fault starts with the VM running at tokyo, and leaves it there for the next."""
    assert where(backend) == {"tokyo": "running"}
    yield backend
    if where(backend) == {"osaka": "running"}:
        back = migrate(backend, "tokyo", Mode.STOCK)
        assert back.result is Result.OK, back.error


# --- what the tests look at -------------------------------------------------------------------

def host_dir(backend, site: str) -> Path:
    return Path(backend.sites_rt[site].config.lab["host_dir"])


def where(backend) -> dict[str, str]:
    """The VM's domain state at each site that has one, as libvirt says."""
    return {site: str(vm.state) for site in ("tokyo", "osaka") for vm in backend.vms(site)
            if vm.name == VM}


def migrate(backend, to: str, mode: Mode, cap: float | None = None,
            during: Callable[[object], None] | None = None) -> MigrationRecord:
    from pcteleport.backend import MigrationRequest

    return backend.migrate(MigrationRequest(VM, to, mode, cap),
                           during if during is not None else lambda ev: None)


def once_copying_memory(action: Callable[[], None]) -> Callable[[object], None]:
    """An event handler that runs `action` (in a thread of its own) at the first sample of the
    memory copy: the disks' writable layers went first."""
    fired = threading.Event()

    def on_event(ev: object) -> None:
        if isinstance(ev, MigrationSample) and ev.total_bytes and not fired.is_set():
            fired.set()
            threading.Thread(target=action, daemon=True).start()

    on_event.fired = fired  # type: ignore[attr-defined]
    return on_event


def shell(backend, site: str, script: str) -> str:
    from pcteleport.lab import guestshell

    status, out = guestshell.run(host_dir(backend, site) / "agents" / f"{VM}.shell.sock",
                                 script, timeout=120)
    assert status == 0, out
    return out


def guest_answers(backend, site: str) -> None:
    """The guest's shell runs a command and its agent answers a verify of the data disk."""
    out = shell(backend, site, "echo alive; cat /proc/uptime")
    assert out.startswith("alive"), out
    result = backend.agent(backend.sites_rt[site], VM).call("verify", {"disk": "pctdata"},
                                                           timeout=300)
    assert result["mismatches"] == []


def relays_left(backend) -> list[str]:
    """Relay processes of this lab (they name its WAN addresses; the sites share the host's
    PIDs with every other lab)."""
    addrs = "|".join(rt.config.wan_addr.replace(".", "[.]") for rt in backend.sites_rt.values())
    out = subprocess.run(["pgrep", "-af", f"pcteleport.cli relay .*({addrs}):"],
                         capture_output=True, text=True)
    return out.stdout.splitlines()


def site_processes(site: str, pattern: str) -> list[str]:
    """Command lines matching `pattern` of processes in this lab's `site` (its network
    namespace: other labs on the host run the same commands)."""
    pids = subprocess.run(["ip", "netns", "pids", _netns(site)], capture_output=True,
                          text=True).stdout.split()
    found = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if pattern in cmdline:
            found.append(cmdline.strip())
    return found


def qemu_pid(backend, site: str) -> int | None:
    """The PID of this lab's QEMU for the VM at `site` (libvirt's pid file), if it runs."""
    pid_file = host_dir(backend, site).parent / "run-libvirt" / "qemu" / f"{VM}.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError, IndexError):
        return None


def assert_failed_cleanly(backend, rec: MigrationRecord, result: Result = Result.FAILED) -> None:
    """The run failed before the switch-over: the VM runs at tokyo only, intact, and osaka
    holds nothing of it; no relay of this lab runs anywhere."""
    assert rec.result is result, (rec.result, rec.error)
    assert rec.runs_at == "tokyo"
    assert f"VM {VM} is running at tokyo" in rec.log[-1].text
    assert "\n" not in (rec.error or "")
    deadline = time.monotonic() + 30  # libvirt's finish at osaka may lag the run's end
    while backend.sites_rt["osaka"].find_domain(VM) is not None or qemu_pid(backend, "osaka"):
        assert time.monotonic() < deadline, f"osaka still holds {VM}: {where(backend)}"
        time.sleep(1)
    assert where(backend) == {"tokyo": "running"}
    assert not list((host_dir(backend, "osaka") / "vms" / VM).glob("*.qcow2"))
    assert relays_left(backend) == []
    guest_answers(backend, "tokyo")


def assert_went_through(backend, rec: MigrationRecord) -> None:
    """The run went through: the VM runs at osaka only, the product verified its page cache
    and its journaled writes there, and nothing of the run is left running."""
    assert rec.result is Result.OK, rec.error
    assert rec.runs_at == "osaka" and where(backend) == {"osaka": "running"}
    assert any("verified at osaka" in line.text for line in rec.log)
    assert rec.write_check is not None and rec.write_check.failed == 0
    assert relays_left(backend) == []
    guest_answers(backend, "osaka")


# --- the faults ---------------------------------------------------------------------------------

def test_send_relay_killed_mid_migration(at_tokyo) -> None:
    """kill -9 of the teleport send relay at tokyo while QEMU writes its memory into it."""
    backend = at_tokyo
    osaka = backend.sites_rt["osaka"]
    killed: list[str] = []

    def kill_send_relay() -> None:
        mine = f"pcteleport.cli relay send --listen 127.0.0.1:[0-9]+ --to {osaka.config.wan_addr}:"
        out = subprocess.run(["pkill", "-KILL", "-e", "-f", mine], capture_output=True, text=True)
        killed.append(out.stdout)

    during = once_copying_memory(kill_send_relay)
    rec = migrate(backend, "osaka", Mode.TELEPORT, cap=8 * MiB, during=during)
    assert killed and "killed" in killed[0], killed
    assert_failed_cleanly(backend, rec)
    assert rec.error is not None and rec.error.startswith("relay send at tokyo: "), rec.error
    assert "killed by signal KILL" in rec.error


def test_destination_qemu_killed_mid_migration(at_tokyo) -> None:
    """kill -9 of the incoming QEMU at osaka while the memory is copied to it (stock)."""
    backend = at_tokyo
    killed: list[int] = []

    def kill_destination_qemu() -> None:
        pid = qemu_pid(backend, "osaka")
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    during = once_copying_memory(kill_destination_qemu)
    rec = migrate(backend, "osaka", Mode.STOCK, cap=8 * MiB, during=during)
    assert killed
    assert_failed_cleanly(backend, rec)
    print(f"destination QEMU killed: {rec.error!r}")
    assert (rec.error or "").startswith("the QEMU at osaka receiving the VM died "), rec.error


# The lab's WAN: each site's tun `wan0` (tbf shapes it, a userspace delay line carries packets
# between the two). A table in each site's namespace drops every packet in and out of it.
DROP_WAN = """table inet pctfault {
    chain in { type filter hook input priority 0; iifname "wan0" drop; }
    chain out { type filter hook output priority 0; oifname "wan0" drop; }
}"""


def _netns(s: str) -> str:
    from pcteleport.lab.topology import site

    return site(s).netns


def wan_down() -> None:
    for s in ("tokyo", "osaka"):
        subprocess.run(["ip", "netns", "exec", _netns(s), "nft", "-f", "-"], input=DROP_WAN,
                       text=True, check=True, timeout=30)


def wan_up(_backend: object) -> None:
    for s in ("tokyo", "osaka"):  # (no table there: nothing to do)
        subprocess.run(["ip", "netns", "exec", _netns(s), "nft", "delete", "table", "inet",
                        "pctfault"], capture_output=True, timeout=30)


def test_wan_down_for_5_s_mid_migration(at_tokyo) -> None:
    """Every WAN packet dropped for 5 s while the memory is copied: TCP retransmits once the
    link is back; the migration goes through (or, if it fails, fails cleanly)."""
    backend = at_tokyo
    downs: list[float] = []

    def outage() -> None:
        wan_down()
        downs.append(time.monotonic())
        time.sleep(5)
        wan_up(backend)

    rec = migrate(backend, "osaka", Mode.STOCK, cap=16 * MiB, during=once_copying_memory(outage))
    assert downs, "the migration never copied memory"
    print(f"WAN down 5 s: {rec.result} in {rec.total_s} s: {rec.error}")
    if rec.result is Result.OK:
        assert_went_through(backend, rec)
    else:
        assert_failed_cleanly(backend, rec)
        assert "WAN" in (rec.error or "")


def test_wan_down_for_60_s_fails_cleanly(at_tokyo) -> None:
    """Every WAN packet dropped for 60 s: the run gives up after 30 s without progress
    (plan.STALL_S), while the link is still down, with the source running and saying why.
    libvirt's cancel of the disks' NBD mirror then waits for TCP to get through once the link
    is back (its retransmissions back off to ~50 s apart), so the run ends later than that."""
    from pcteleport.sites.libvirt.migration.plan import STALL_S

    backend = at_tokyo
    down_at: list[float] = []

    def drop_wan() -> None:
        wan_down()
        down_at.append(time.monotonic())

    restore = threading.Timer(60, wan_up, args=(backend,))
    try:
        rec = migrate(backend, "osaka", Mode.STOCK, cap=16 * MiB,
                      during=once_copying_memory(lambda: (drop_wan(), restore.start())))
        ended_after = time.monotonic() - down_at[0]
    finally:
        restore.cancel()
        wan_up(backend)
    # on the run's own clock: the outage began at its first sample of the memory copy
    outage = next(s.t for s in rec.samples if s.total_bytes)
    stalled = next(line.t for line in rec.log if "no progress for" in line.text)
    declared_after = stalled - outage
    print(f"WAN down 60 s: gave up {declared_after:.0f} s into the outage, the run ended "
          f"{ended_after:.0f} s into it: {rec.error}")
    assert STALL_S <= declared_after < 60  # given up while the WAN was still down
    assert ended_after < 240  # (a generous bound: see above)
    times = [s.t for s in rec.samples]
    assert all(b - a > 0.3 for a, b in itertools.pairwise(times))  # no burst
    assert_failed_cleanly(backend, rec)
    assert rec.error is not None and rec.error.startswith("no progress for "), rec.error
    assert "nothing reached osaka over the WAN (is the link down?)" in rec.error


@pytest.mark.parametrize("stage", ["measuring", "storage", "memory", "checks"])
def test_ctrl_c_of_migrate(at_tokyo, stage: str) -> None:
    """SIGINT to `pcteleport migrate` while it measures for its prediction (before anything
    started), while libvirt mirrors the disks, and while QEMU copies the memory: it stops, the
    VM runs on at tokyo, and the last line says so. After the switch-over, while the VM is
    checked at osaka, it is too late: the run says so and finishes its checks."""
    backend = at_tokyo
    if stage == "storage":  # data in the overlay, so that its copy lasts at the cap
        shell(backend, "tokyo", "dd if=/dev/urandom of=/data/blob bs=1M count=8 2>/dev/null;"
              " sync")
    wanted = {"measuring": "measuring before the start", "storage": "storage migration active",
              "memory": " migration active, ",
              "checks": f"(VM {VM} now writes its disks at osaka)"}[stage]
    records_before = len(backend.records().records)
    cap = [] if stage == "checks" else ["--bandwidth", "2"]  # the checks: soon, at full speed
    proc = subprocess.Popen(
        [sys.executable, "-m", "pcteleport.cli", "migrate", VM, "--to", "osaka", "--mode",
         "stock", *cap, "--json"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL)
    seen: list[str] = []
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line)
            if wanted in line:
                if stage == "measuring":
                    time.sleep(2)  # into the measurement: the agent's walk, the RAM sample
                proc.send_signal(signal.SIGINT)
                break
        stdout, rest = proc.communicate(timeout=180)
    finally:
        proc.kill()
    err = [*seen, *rest.splitlines(keepends=True)]
    assert any(wanted in line for line in seen), "".join(seen)
    assert not any("Traceback" in line for line in err), "".join(err)
    last = err[-1].strip()
    print(f"Ctrl-C at {stage}: {last}")
    if stage == "measuring":
        assert proc.returncode == 130, "".join(err)
        assert stdout == ""
        assert last == (f"pcteleport: interrupted while measuring, before the migration "
                        f"started: nothing was started; VM {VM} is running at tokyo")
        assert len(backend.records().records) == records_before
        assert where(backend) == {"tokyo": "running"}
        assert relays_left(backend) == []
        # the RAM sampler was told to stop; busy with its sample, it may take a few seconds
        deadline = time.monotonic() + 30
        while site_processes("tokyo", "guest-ram serve"):
            assert time.monotonic() < deadline, site_processes("tokyo", "guest-ram serve")
            time.sleep(0.5)
        guest_answers(backend, "tokyo")
        return
    if stage == "checks":
        assert proc.returncode == 0, "".join(err)
        summary = json.loads(stdout.strip().splitlines()[-1])
        assert summary["result"] == "ok" and summary["runs_at"] == "osaka"
        assert any(f"not aborted: the switch-over is done and VM {VM} runs at osaka; its "
                   "checks there go on" in line for line in err), "".join(err)
        assert "migration finished successfully" in last
        rec = max(backend.records().records, key=lambda r: r.started_at)
        assert_went_through(backend, rec)
        return
    assert proc.returncode == 1, "".join(err)
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["result"] == "aborted" and summary["runs_at"] == "tokyo"
    assert "aborted by the operator" in last and f"VM {VM} is running at tokyo" in last
    rec = max(backend.records().records, key=lambda r: r.started_at)
    assert_failed_cleanly(backend, rec, Result.ABORTED)


# The guest agent (started by the guest's init, guestinit.py): killed, its command line kept
# in the guest's /tmp (RAM: it migrates with the VM) to start it again.
KILL_AGENT = r"""python3 - <<'EOF'
import os, signal
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
    except OSError:
        continue
    if len(argv) > 2 and argv[1].endswith(b"agent.py") and argv[2] == b"serve":
        open("/tmp/agent.argv", "wb").write(b"\0".join(a for a in argv if a))
        os.kill(int(pid), signal.SIGKILL)
        print("killed", pid)
EOF"""
START_AGENT = r"""python3 - <<'EOF'
import subprocess
argv = open("/tmp/agent.argv", "rb").read().split(b"\0")
subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=open("/var/log/pcteleport-agent.log",
                 "ab"), stderr=subprocess.STDOUT, start_new_session=True)
EOF"""


def test_guest_agent_killed_before_the_checks(at_tokyo) -> None:
    """The guest agent killed in the guest while the memory is copied (stock needs it only
    afterwards): the VM moves, the checks at osaka cannot run, and the run says so and says
    truthfully that the VM runs at osaka."""
    backend = at_tokyo
    said: list[str] = []
    rec = migrate(backend, "osaka", Mode.STOCK, cap=16 * MiB, during=once_copying_memory(
        lambda: said.append(shell(backend, "tokyo", KILL_AGENT))))
    assert said and said[0].startswith("killed "), said
    print(f"guest agent killed: {rec.result}: {rec.error}")
    assert rec.result is Result.FAILED
    assert rec.runs_at == "osaka" and where(backend) == {"osaka": "running"}
    assert rec.error is not None and rec.error.startswith("after migration: "), rec.error
    assert "agent" in rec.error and "\n" not in rec.error
    assert f"VM {VM} runs at osaka" in rec.log[-1].text
    assert relays_left(backend) == []
    shell(backend, "osaka", START_AGENT)  # the guest is fine: its agent again, then checked
    deadline = time.monotonic() + 60
    while True:
        try:
            backend.agent(backend.sites_rt["osaka"], VM).ping()
            break
        except Exception:
            assert time.monotonic() < deadline, "the restarted agent never answered"
            time.sleep(1)
    guest_answers(backend, "osaka")


def test_destination_libvirtd_killed_mid_migration(at_tokyo) -> None:
    """kill -9 of osaka's libvirtd while the memory is copied: the run fails naming osaka's
    libvirt, the VM runs on at tokyo; once libvirtd is back (as an operator restarts it),
    osaka holds nothing of the run."""
    from pcteleport.lab import shell as labshell
    from pcteleport.lab import site as labsite
    from pcteleport.lab.paths import LabPaths
    from pcteleport.lab.topology import site

    backend = at_tokyo
    paths, osaka = LabPaths.default(), site("osaka")
    killed: list[int] = []

    def kill_libvirtd() -> None:
        pid = labshell.read_pid(paths.site("osaka").libvirtd_pid)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    try:
        rec = migrate(backend, "osaka", Mode.STOCK, cap=16 * MiB,
                      during=once_copying_memory(kill_libvirtd))
    finally:
        paths.site("osaka").libvirtd_pid.unlink(missing_ok=True)
        labsite.ensure_libvirtd(paths, osaka, labsite.require_holder(paths, osaka))
    assert killed
    print(f"destination libvirtd killed: {rec.result}: {rec.error}; {rec.log[-1].text}")
    assert_failed_cleanly(backend, rec)
    assert (rec.error or "").startswith("libvirt at osaka stopped answering during the "
                                        "migration; libvirt: "), rec.error
    assert any("removed /srv/vms/web-small/vda.qcow2, /srv/vms/web-small/vdb.qcow2 at osaka"
               in line.text for line in rec.log)


def test_ssh_to_the_destination_cut_mid_migration(at_tokyo) -> None:
    """Every SSH connection to osaka cut (its sshd's session processes killed) while the memory
    is copied by teleport: libvirt's connection to osaka rides on SSH (qemu+ssh), as do the
    relay and tunnel at osaka. The run fails naming osaka, the VM runs on at tokyo, and once SSH
    answers again osaka holds nothing of the run: no domain, no overlay, no relay."""
    from pcteleport.lab import shell as labshell
    from pcteleport.lab.paths import LabPaths

    backend = at_tokyo
    sshd = labshell.read_pid(LabPaths.default().site("osaka").sshd_pid)
    assert sshd is not None
    cut: list[str] = []

    def cut_ssh() -> None:
        out = subprocess.run(["pkill", "-KILL", "-e", "-P", str(sshd)], capture_output=True,
                             text=True)
        cut.append(out.stdout)

    rec = migrate(backend, "osaka", Mode.TELEPORT, cap=8 * MiB, during=once_copying_memory(cut_ssh))
    assert cut and "killed" in cut[0], cut
    print(f"SSH to osaka cut: {rec.result}: {rec.error}; {rec.log[-1].text}")
    assert_failed_cleanly(backend, rec)
    assert "its SSH connection to osaka was lost" in (rec.error or ""), rec.error


def test_destination_disk_full_during_the_storage_copy(at_tokyo) -> None:
    """osaka's directory for the VM's overlays is a 2 MiB filesystem and the VM has 8 MiB of
    new data in its overlay: libvirt's storage copy fails with ENOSPC at osaka. The run fails
    saying osaka's disk is full, the VM runs on at tokyo with its disks untouched, osaka keeps
    nothing of the run."""
    from pcteleport.lab import shell as labshell
    from pcteleport.lab.paths import LabPaths

    backend = at_tokyo
    holder = labshell.read_pid(LabPaths.default().site("osaka").holder_pid)
    assert holder is not None
    vm_dir = f"/srv/vms/{VM}"

    def at_osaka(*cmd: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(labshell.in_site(holder, cmd), capture_output=True, text=True,
                              timeout=60)

    shell(backend, "tokyo", "dd if=/dev/urandom of=/data/blob bs=1M count=8 2>/dev/null; sync")
    assert at_osaka("mkdir", "-p", vm_dir).returncode == 0
    mounted = at_osaka("mount", "-t", "tmpfs", "-o", "size=2m", "pctfull", vm_dir)
    assert mounted.returncode == 0, mounted.stderr
    try:
        rec = migrate(backend, "osaka", Mode.STOCK)
        print(f"osaka's disk full: {rec.result}: {rec.error}; {rec.log[-1].text}")
        assert_failed_cleanly(backend, rec)
        assert (rec.error or "").startswith(
            f"the disk at osaka holding the VM's images is full ({vm_dir} "), rec.error
        assert "MiB free): the disks' copy could not be written there; libvirt: " in rec.error
        assert "No space left on device" in rec.error
        # nothing of the run's left on it: no image (the incoming QEMU's serial log stays, as
        # it does at every site a VM has run: the evidence if a guest had crashed there)
        assert at_osaka("ls", "-A", vm_dir).stdout.split() in ([], ["console.log"])
    finally:
        at_osaka("umount", vm_dir)
    shell(backend, "tokyo", "rm -f /data/blob; sync")
