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
import random
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from qemu_guest import Disk, QemuGuest, debian_guest_boot, make_ext4

from pcteleport.guest import agent

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
    from pcteleport.sites.agent_client import AgentClient

    boot = debian_guest_boot()
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


# In the guest, as root: a SCHED_FIFO task wakes every millisecond and notes when it ran, while
# this script walks (stats and map, 5 times each; the walk is the open()). Prints JSON: each
# walk's span and counters, and how many times the waiting task ran within that span.
WALKS_WITH_A_WAITING_TASK = r"""
import json, os, subprocess, sys, time

WAKER = (
    "import os, time\n"
    "os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(50))\n"
    "ran = []\n"
    "while not os.path.exists('/tmp/stop-waker'):\n"
    "    time.sleep(0.001)\n"
    "    ran.append(time.monotonic())\n"
    "open('/tmp/waker.out', 'w').write(' '.join('%.6f' % t for t in ran))\n")
for f in ('/tmp/stop-waker', '/tmp/waker.out'):
    if os.path.exists(f):
        os.remove(f)
waker = subprocess.Popen([sys.executable, '-c', WAKER])
time.sleep(1)
walks = []
for i in range(5):
    for name in ('stats', 'map'):
        t0 = time.monotonic()
        with open('/proc/pcteleport/' + name) as f:
            t1 = time.monotonic()
            header = []
            for line in f:
                if name == 'map' and not line.startswith('#'):
                    break
                header.append(line.lstrip('# ').split())
        counters = {w[0]: int(w[1]) for w in header if len(w) == 2 and w[1].isdigit()}
        walks.append({'name': name, 't0': t0, 't1': t1, 'walk_ns': counters['walk_ns'],
                      'lock_breaks': counters.get('lock_breaks')})
time.sleep(0.2)
open('/tmp/stop-waker', 'w').close()
waker.wait()
ran = [float(t) for t in open('/tmp/waker.out').read().split()]
for w in walks:
    w['ran'] = sum(1 for t in ran if w['t0'] < t < w['t1'])
gaps = [b - a for a, b in zip(ran, ran[1:])]
print(json.dumps({'walks': walks, 'wakeups': len(ran), 'worst_gap_ms': max(gaps) * 1e3}))
"""


@pytest.mark.qemu
@pytest.mark.slow
def test_walks_over_many_pageless_inodes_let_a_waiting_task_run(guest: Guest) -> None:
    """MANY_FILES empty files, all in the inode cache, no page cached: the walk skips them
    all. A SCHED_FIFO task wakes every millisecond on the same (only) vCPU. Were the skips
    made under the list lock from end to end, it could not run while the walk crossed them,
    nearly the whole walk; rescheduling among them, the walk lets the lock go each time the
    task waits (lock_breaks), and the task runs then.

    Counted, not timed: under TCG the guest's clock is the host's, so a busy host that stops
    QEMU for a while makes any task in the guest look late (437 ms once, with the fix). Such a
    stop pauses the walk and the waiting task alike; it cannot make the task run during a walk
    that holds the lock."""
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
    q.run("dmesg -c > /dev/null")
    out = q.run(f"python3 - <<'PYEOF'\n{WALKS_WITH_A_WAITING_TASK}\nPYEOF", timeout=600)
    result = json.loads(out.strip().splitlines()[-1])
    complaints = q.run(f"dmesg | grep -E '{KERNEL_COMPLAINTS}' || true")
    walks = result["walks"]
    summary = ", ".join(f"{w['name']} {w['walk_ns'] / 1e6:.0f} ms: ran {w['ran']}, "
                        f"lock_breaks {w['lock_breaks']}" for w in walks)
    print(f"\nFIGURES {MANY_FILES} page-less inodes, a task waking every ms: {summary}; "
          f"{result['wakeups']} wake-ups, longest gap {result['worst_gap_ms']:.1f} ms")
    assert complaints.strip() == "", complaints
    assert len(walks) == 10 and result["wakeups"] > 100, out
    for w in walks:
        # Crossing the skipped inodes (100 ms and more under TCG), the walk met the waiting
        # task many times and let the lock go for it...
        assert w["lock_breaks"] is not None and w["lock_breaks"] >= 20, w
        # ...and the task did run then, as seen from user space. (With the module before the
        # change, which has no lock_breaks, it ran 3-21 times in walks of 250-500 ms; with it,
        # 84-143 times, about once per lock break.)
        assert w["ran"] >= w["lock_breaks"] / 2, w
