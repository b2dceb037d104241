"""The kernel module's rules (issue 12, item 6), and the agent's side of them.

- The walk reschedules among the inodes it skips: a filesystem with very many page-less
  inodes must not hold s_inode_list_lock (a spinlock, so no rescheduling) from one end of its
  inode list to the other while another task waits to run.
- /proc/pcteleport/map and /stats are root only; the agent, run as another user, says so in one
  line instead of failing with a traceback.
- The module holds the one list of filesystem types it can map (read-only parameter
  "supported"); the agent reads it there, and its fallback's own list is the same.

The pure-Python tests run anywhere; the guest tests boot one Debian guest (TCG) with the
module built from kmodule/ and run in CI (they never skip there).
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import require
from qemu_guest import Disk, QemuGuest, make_ext4

from guest import agent

PAGE = 4096
AGENT = "/usr/lib/pcteleport/agent.py"
MANY_FILES = 200_000  # empty files on the "many" disk: inodes without a page-cache page
NOBODY = 65534
# The guest kernel's complaints that must never follow a walk.
KERNEL_COMPLAINTS = r"soft lockup|hard LOCKUP|BUG|Oops|WARNING|rcu.*stall|blocked for more"


# --- pure Python: the agent's reading of the module ---------------------------------------


def test_parse_fstypes_takes_the_parameters_form() -> None:
    assert agent.parse_fstypes("ext4,ext3,ext2,xfs,vfat,msdos\n") == (
        "ext4", "ext3", "ext2", "xfs", "vfat", "msdos")
    assert agent.parse_fstypes(" ext4 , xfs,\n") == ("ext4", "xfs")
    assert agent.parse_fstypes("") == ()


def test_fstypes_to_walk_are_the_registered_supported_ones_in_the_modules_order() -> None:
    proc_filesystems = "nodev\tsysfs\nnodev\ttmpfs\n\tvfat\n\text3\n\text4\nnodev\tbtrfs\n"
    supported = ("ext4", "ext3", "ext2", "xfs", "vfat", "msdos")
    assert agent.fstypes_to_walk(supported, proc_filesystems) == "ext4,ext3,vfat"
    # btrfs is registered but not supported: never named.
    assert agent.fstypes_to_walk(("ext4", "btrfs"), "\text4\n") == "ext4"
    assert agent.fstypes_to_walk(supported, "") == ""


def _fake_module(tmp: Path, monkeypatch, supported: str | None, registered: str) -> Path:
    """PROC_DIR, PARAM_DIR and /proc/filesystems of a pretend module in ``tmp``."""
    proc, params = tmp / "proc", tmp / "params"
    proc.mkdir()
    params.mkdir()
    (params / "fstypes").write_text("ext4,ext3,ext2\n")
    if supported is not None:
        (params / "supported").write_text(supported)
    (tmp / "filesystems").write_text(registered)
    monkeypatch.setattr(agent, "PROC_DIR", str(proc))
    monkeypatch.setattr(agent, "PARAM_DIR", str(params))
    monkeypatch.setattr(agent, "PROC_FILESYSTEMS", str(tmp / "filesystems"))
    return params


def test_agent_sets_fstypes_from_the_modules_supported_list(tmp_path, monkeypatch) -> None:
    params = _fake_module(tmp_path, monkeypatch, "ext4,xfs,vfat\n", "\text4\n\tvfat\n\txfs\n")
    assert agent.module_fstypes() == ("ext4", "xfs", "vfat")
    agent._set_module_fstypes()
    assert (params / "fstypes").read_text() == "ext4,xfs,vfat"
    # Whatever the module lists is what the agent asks for: the agent has no list of its own.
    (params / "supported").write_text("xfs\n")
    agent._set_module_fstypes()
    assert (params / "fstypes").read_text() == "xfs"


def test_a_module_without_supported_keeps_its_fstypes(tmp_path, monkeypatch) -> None:
    params = _fake_module(tmp_path, monkeypatch, None, "\text4\n\tvfat\n")
    assert agent.module_fstypes() is None
    agent._set_module_fstypes()
    assert (params / "fstypes").read_text() == "ext4,ext3,ext2\n"
    hello = agent.Server(0, 1, reconnecting=False).dispatch("hello", {})
    assert hello["source"] == "module" and hello["fstypes"] is None
    assert any("does not list the filesystems" in w for w in hello["warnings"])


def test_hello_names_the_fstypes_of_the_source_in_use(tmp_path, monkeypatch) -> None:
    _fake_module(tmp_path, monkeypatch, "ext4,xfs\n", "\text4\n")
    server = agent.Server(0, 1, reconnecting=False)
    assert server.dispatch("hello", {})["fstypes"] == ["ext4", "xfs"]
    monkeypatch.setattr(agent, "PROC_DIR", str(tmp_path / "no-module"))
    hello = server.dispatch("hello", {})
    assert hello["source"] == "fallback"
    assert hello["fstypes"] == list(agent.FALLBACK_FSTYPES)


def test_composition_reads_the_stats_walk(tmp_path, monkeypatch) -> None:
    _fake_module(tmp_path, monkeypatch, "ext4\n", "\text4\n")
    (Path(agent.PROC_DIR) / "stats").write_text(
        "superblocks 2\ninodes 9\nrestorable_estimate 25\nlock_breaks 3\nwalk_ns 1000\n"
        "sb ext4 vda 254:0 disk vda 254:0 start 0\n")
    comp = agent.Composition()
    snap = comp.snapshot()
    assert snap["source"] == "module" and snap["restorable"] == 25 * PAGE
    assert comp.warning is None
    counters, sbs = agent._module_counters((Path(agent.PROC_DIR) / "stats").read_text())
    assert counters["lock_breaks"] == 3 and sbs[0]["fstype"] == "ext4"


def test_composition_without_root_says_why_restorable_is_missing(tmp_path, monkeypatch,
                                                                 capsys) -> None:
    """The stats file is root only: a non-root agent gets EACCES (a root test process would
    not, so the refusal is simulated) and must say so, once, rather than fail."""
    _fake_module(tmp_path, monkeypatch, "ext4\n", "\text4\n")
    stats = str(Path(agent.PROC_DIR) / "stats")
    Path(stats).write_text("restorable_estimate 25\n")
    real_open = open

    def refusing_open(path, *args, **kwargs):
        if str(path) == stats:
            raise PermissionError(13, "Permission denied", stats)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(agent, "open", refusing_open, raising=False)
    comp = agent.Composition()
    snap = comp.snapshot()
    assert snap["restorable"] is None and snap["source"] == "module"
    assert comp.warning == agent.NOT_ROOT_RESTORABLE
    assert agent.main(["composition", "--count", "3", "--interval", "0"]) == 0
    out, err = capsys.readouterr()
    assert [json.loads(line)["restorable"] for line in out.splitlines()] == [None] * 3
    assert err.count("pcteleport-agent: not root:") == 1, err


# --- in a guest -------------------------------------------------------------------------------


class Guest:
    def __init__(self, qemu: QemuGuest, agent_client) -> None:
        self.qemu, self.agent = qemu, agent_client

    def as_nobody(self, script: str):
        """Run a Python script in the guest as uid/gid 65534 (no capabilities left)."""
        wrapped = (f"import os\nos.setgroups([])\nos.setgid({NOBODY})\nos.setuid({NOBODY})\n"
                   + script)
        return self.qemu.run(f"python3 - <<'PYEOF'\n{wrapped}\nPYEOF", check=False)


def _many_empty_files(tmp: Path, count: int) -> Path:
    """An ext4 image holding ``count`` empty files (inodes, no data blocks)."""
    src = tmp / "many-src"
    for d in range(count // 1000):
        sub = src / f"d{d:03d}"
        sub.mkdir(parents=True)
        for i in range(1000):
            (sub / f"e{i:03d}").touch()
    image = tmp / "many.raw"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-N", str(count + 2048), "-m", "0",
                    "-L", "many", "-d", str(src), str(image), "320M"], check=True)
    shutil.rmtree(src)
    return image


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory):
    from console.errors import PcteleportError
    from console.sites import guestimage
    from console.sites.agent_client import AgentClient

    require(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86_64 is not installed")
    require(os.geteuid() == 0, "needs root (chroot to build the guest root filesystem)")
    try:
        boot = guestimage.debian_boot()
    except PcteleportError as exc:
        require(False, str(exc))
    tmp = tmp_path_factory.mktemp("kmodrules")
    rng = random.Random(12)
    data = make_ext4(tmp / "data.raw", {f"files/k{i}.bin": rng.randbytes(64 * PAGE + 100 * i)
                                        for i in range(4)}, size_mib=16)
    many = _many_empty_files(tmp, MANY_FILES)
    # One vCPU: the walk and the task that waits for it share it.
    qemu = QemuGuest(boot, tmp / "vm", memory_mib=768, smp=1, agent=True, timeout_s=1500,
                     disks=[Disk(data, "data", readonly=True), Disk(many, "many", readonly=True)])
    with qemu:
        qemu.wait_for("PCTELEPORT-READY", timeout=120)
        assert "PCTELEPORT-MODULE loaded" in qemu.console(), qemu.console()[-2000:]
        qemu.run("set -e; mkdir -p /mnt/data /mnt/many;"
                 "mount -t ext4 -o ro /dev/disk/by-id/virtio-data /mnt/data;"
                 "mount -t ext4 -o ro /dev/disk/by-id/virtio-many /mnt/many;"
                 "cat /mnt/data/files/* > /dev/null")
        client = AgentClient.connect_unix(qemu.agent_socket, timeout=120)
        try:
            yield Guest(qemu, client)
        finally:
            client.close()


@pytest.mark.qemu
@pytest.mark.slow
def test_proc_files_are_root_only(guest: Guest) -> None:
    modes = guest.qemu.run("stat -c '%a %u %n' /proc/pcteleport/map /proc/pcteleport/stats")
    assert modes.split("\n")[:2] == ["400 0 /proc/pcteleport/map",
                                     "400 0 /proc/pcteleport/stats"], modes
    res = guest.as_nobody(
        "import errno\n"
        "for name in ('map', 'stats'):\n"
        "    try:\n"
        "        open('/proc/pcteleport/' + name).read()\n"
        "        print(name, 'READ')\n"
        "    except OSError as exc:\n"
        "        print(name, errno.errorcode[exc.errno])\n")
    assert res.status == 0 and res.output.split("\n")[:2] == ["map EACCES", "stats EACCES"], res
    # root still reads both
    assert re.search(r"^restorable_estimate \d+$",
                     guest.qemu.run("cat /proc/pcteleport/stats"), re.M)
    assert guest.qemu.run("head -1 /proc/pcteleport/map").startswith("# pcteleport map v1")


@pytest.mark.qemu
@pytest.mark.slow
def test_the_agent_as_another_user_fails_in_one_clear_line(guest: Guest) -> None:
    run_agent = ("import runpy, sys\nsys.argv = ['agent'] + %r\n"
                 f"runpy.run_path('{AGENT}', run_name='__main__')\n")
    for args, code in ((["map", "--disk", "data"], "not-root"),
                       (["map", "--disk", "data", "--source", "module"], "not-root"),
                       (["map", "--disk", "data", "--source", "fallback"], "not-root")):
        res = guest.as_nobody(run_agent % args)
        assert res.status == 2, (args, res)
        assert f"pcteleport-agent: {code}:" in res.output and "Traceback" not in res.output, res
    # composition works without root, with no restorable figure and a one-line reason
    res = guest.as_nobody(run_agent % ["composition", "--count", "2", "--interval", "0.1"])
    assert res.status == 0 and "Traceback" not in res.output, res
    lines = res.output.splitlines()
    snaps = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(snaps) == 2 and all(s["restorable"] is None and s["source"] == "module"
                                   for s in snaps), res
    assert [line for line in lines if not line.startswith("{")] == [
        "pcteleport-agent: " + agent.NOT_ROOT_RESTORABLE], res
    # served requests: errors with a code, the agent keeps serving
    requests = "".join(json.dumps({"id": i, "method": m, "params": p}) + "\n" for i, (m, p) in
                       enumerate((("hello", {}), ("map", {"disk": "data"}),
                                  ("verify", {"disk": "data"}), ("ping", {}))))
    res = guest.as_nobody(
        "import subprocess, sys\n"
        f"p = subprocess.run([sys.executable, '{AGENT}', 'serve', '--stdio'], input={requests!r},"
        " capture_output=True, text=True)\n"
        "print(p.stdout, end='')\nprint(p.stderr, end='')\n")
    assert "Traceback" not in res.output, res
    replies = [json.loads(line) for line in res.output.splitlines()]
    assert any("not root" in w for w in replies[0]["result"]["warnings"])
    assert [r.get("error", {}).get("code") for r in replies[1:]] == ["not-root", "not-root", None]


@pytest.mark.qemu
@pytest.mark.slow
def test_supported_is_the_one_fstype_list(guest: Guest) -> None:
    q = guest.qemu
    param = "/sys/module/pcteleport/parameters/supported"
    assert q.run(f"stat -c %a {param}").strip() == "444"
    supported = agent.parse_fstypes(q.run(f"cat {param}"))
    assert "ext4" in supported and "btrfs" not in supported  # no device offsets in its FIEMAP
    assert q.run(f"echo ext4 > {param}", check=False).status != 0  # read-only, even for root
    assert agent.parse_fstypes(q.run(f"cat {param}")) == supported
    # The agent's lists are the module's: what hello names, and the fallback's own.
    assert guest.agent.hello()["fstypes"] == list(supported)
    assert supported == agent.FALLBACK_FSTYPES
    # After a walk the module walks the registered supported types, in the module's order.
    guest.agent.map("data")
    want = agent.fstypes_to_walk(supported, q.run("cat /proc/filesystems"))
    assert "ext4" in want.split(",")
    assert q.run("cat /sys/module/pcteleport/parameters/fstypes").strip() == want
    # Not settable at load time either; without the module, hello names the fallback's list.
    ko = "/lib/modules/$(uname -r)/extra/pcteleport.ko"
    q.run("rmmod pcteleport")
    try:
        refused = q.run(f"insmod {ko} supported=ext4,btrfs", check=False)
        assert refused.status != 0 and not q.run("ls /sys/module | grep -x pcteleport",
                                                  check=False).output, refused
        hello = guest.agent.hello()
        assert hello["source"] == "fallback" and hello["fstypes"] == list(supported)
    finally:
        q.run(f"insmod {ko}")
    assert guest.agent.hello()["fstypes"] == list(supported)


@pytest.mark.qemu
@pytest.mark.slow
def test_walks_over_many_pageless_inodes_let_a_waiting_task_run(guest: Guest) -> None:
    """MANY_FILES empty files, all in the inode cache, no page cached: the walk skips them
    all. A SCHED_FIFO task waking every millisecond on the same (only) vCPU measures how late
    it runs. Were the skips made under the list lock from end to end, it would wait for the
    whole run of them (the walk's time on that filesystem); rescheduling among them, it waits
    far less, and the walk counts the times it let the lock go (lock_breaks)."""
    q = guest.qemu
    loaded = q.run(
        "python3 - <<'PYEOF'\n"
        "import os\n"
        "n = 0\n"
        "for d in os.scandir('/mnt/many'):\n"
        "    if d.is_dir():\n"
        "        for e in os.scandir(d.path):\n"
        "            os.stat(e.path)\n"
        "            n += 1\n"
        "print(n, open('/proc/sys/fs/inode-nr').read().split()[0])\n"
        "PYEOF", timeout=600)
    stated, in_cache = (int(w) for w in loaded.split())
    assert stated == MANY_FILES and in_cache >= MANY_FILES, loaded
    q.run("cat > /tmp/waker.py <<'PYEOF'\n"
          "import os, sys, time\n"
          "os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(50))\n"
          "period, worst, n = 0.001, 0.0, 0\n"
          "while not os.path.exists(sys.argv[1]):\n"
          "    t = time.monotonic()\n"
          "    time.sleep(period)\n"
          "    worst = max(worst, time.monotonic() - t - period)\n"
          "    n += 1\n"
          "print(round(worst * 1e9), n)\n"
          "PYEOF")
    out = q.run(
        "rm -f /tmp/stop; dmesg -c > /dev/null\n"
        "python3 /tmp/waker.py /tmp/stop > /tmp/waker.out & w=$!\n"
        "sleep 1\n"
        "for i in 1 2 3 4 5; do\n"
        "    cat /proc/pcteleport/stats > /tmp/stats.$i\n"
        "    cat /proc/pcteleport/map > /dev/null\n"
        "done\n"
        "touch /tmp/stop; wait $w\n"
        "echo WAKER $(cat /tmp/waker.out)\n"
        "for i in 1 2 3 4 5; do echo STATS; cat /tmp/stats.$i; done\n"
        "echo kernel-complaints:\n"
        f"dmesg | grep -E '{KERNEL_COMPLAINTS}' || true\n", timeout=600)
    worst_ns, wakeups = (int(w) for w in re.search(r"^WAKER (\d+) (\d+)$", out, re.M).groups())
    walks = [agent._module_counters(text)[0]
             for text in out.split("kernel-complaints:")[0].split("STATS\n")[1:]]
    assert len(walks) == 5, out
    walk_ns = sorted(w["walk_ns"] for w in walks)
    lock_breaks = [w.get("lock_breaks") for w in walks]
    print(f"\nFIGURES {MANY_FILES} page-less inodes: stats walks {walk_ns} ns, lock_breaks "
          f"{lock_breaks}; waiting task: {wakeups} wake-ups, worst {worst_ns / 1e6:.2f} ms late")
    assert out.split("kernel-complaints:")[1].strip() == "", out
    assert wakeups > 100, out
    assert all(b is not None and b > 0 for b in lock_breaks), out
    # A run of skipped inodes no longer holds the waiting task up for the whole walk. (Made
    # under the lock from end to end, the skips kept it waiting as long as a walk: 131 ms
    # against walks of 132-142 ms, measured with the module before the change; 4.6 ms after.)
    assert worst_ns < walk_ns[len(walk_ns) // 2] / 2, out
