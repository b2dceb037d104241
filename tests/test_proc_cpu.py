"""The CPU of a migration's processes (issue 16): /proc stat lines parsed, QEMU's threads told
apart (migration threads and the main thread counted, vCPUs never), a watcher's readings over
threads that start and end, the site-host watcher's protocol, and what a run records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from pcteleport.records import PageCounts, ProcessCpu
from pcteleport.sites.libvirt import proc_cpu
from pcteleport.sites.libvirt.migration import stats
from pcteleport.sites.libvirt.migration.cpu import CpuMeter
from pcteleport.sites.libvirt.proc_cpu import (
    ProcCpuError,
    ThreadCpu,
    ThreadSpan,
    Watch,
    counted,
    parse_stat,
    spans_used,
)
from pcteleport.sites.libvirt.relays import RelayEnd
from pcteleport.teleport import events
from pcteleport.teleport.counters import CodecCounters

# A vCPU thread's line as QEMU 10 has it: a name with a space and a slash; utime 250, stime 50.
VCPU_LINE = ("4242 (CPU 0/TCG) R 4200 4200 0 0 -1 4194368 0 0 0 0 250 50 0 0 20 0 7 0 100 "
             "2000000 500 18446744073709551615 0 0 0 0 0 0 0 4096 0 0 0 0 -1 1 0 0 0 0 0")


def test_a_stat_line_gives_the_threads_name_and_its_user_plus_system_time():
    assert parse_stat(VCPU_LINE, 100) == ThreadCpu(4242, "CPU 0/TCG", 3.0)
    odd = VCPU_LINE.replace("(CPU 0/TCG)", "(a) (b)")  # fields count after the last ')'
    assert parse_stat(odd, 100) == ThreadCpu(4242, "a) (b", 3.0)
    with pytest.raises(ProcCpuError, match="not a /proc stat line"):
        parse_stat("4242 no parentheses 1 2 3", 100)


@pytest.mark.parametrize(("name", "side", "expected"), [
    ("main", "source", False), ("main", "destination", True),
    ("mig/src/main", "source", True), ("live_migration", "source", True),
    ("mig/src/send_1", "source", True), ("multifdsend_0", "source", True),
    ("mig/dst/recv_0", "destination", True), ("multifdrecv_3", "destination", True),
    ("mig/src/main", "destination", False), ("mig/dst/recv_0", "source", False),
    ("CPU 0/TCG", "source", False), ("CPU 1/KVM", "destination", False),
    ("worker", "source", False), ("call_rcu", "destination", False),
])
def test_migration_threads_and_the_main_thread_count_vcpus_never(name, side, expected):
    assert counted(name, side) is expected


def test_a_watch_keeps_each_threads_first_and_last_reading_and_those_born_count_from_zero():
    w = Watch(100)
    w.poll([ThreadCpu(100, "main", 1.0), ThreadCpu(101, "CPU 0/TCG", 5.0)])
    w.poll([ThreadCpu(100, "main", 1.5), ThreadCpu(101, "CPU 0/TCG", 9.0),
            ThreadCpu(102, "mig/src/main", 0.4)])
    w.poll([ThreadCpu(100, "main", 1.75), ThreadCpu(101, "CPU 0/TCG", 12.0)])  # 102 ended
    w.poll([])  # the process is gone: its last readings stand
    assert w.ended
    rep = w.report()
    spans = [ThreadSpan(*t) for t in rep["threads"]]
    assert spans_used(spans, "source") == {"mig/src/main": 0.4}
    assert spans_used(spans, "destination") == {"main": 0.75}


def test_threads_of_a_real_process_are_read_with_their_names_and_cpu(tmp_path):
    """A local process names two of its threads as QEMU does (writing their comm) and burns
    CPU in them; /proc says which is which, and only the migration one counts at the source."""
    child = textwrap.dedent("""
        import os, sys, threading, time
        def named(name, ready):
            with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as f:
                f.write(name)
            while time.thread_time() < 0.05:
                pass
            ready.set()
            threading.Event().wait()
        events = []
        for name in ("mig/src/main", "CPU 0/TCG"):
            e = threading.Event()
            threading.Thread(target=named, args=(name, e), daemon=True).start()
            events.append(e)
        for e in events:
            e.wait()
        print("ready", flush=True)
        sys.stdin.read()
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        threads = proc_cpu.read_threads(proc.pid)
        by_name = {t.name: t for t in threads}
        assert {"main", "mig/src/main", "CPU 0/TCG"} <= set(by_name)
        assert by_name["main"].tid == proc.pid
        assert by_name["mig/src/main"].cpu_s > 0 and by_name["CPU 0/TCG"].cpu_s > 0
        w = Watch(proc.pid)
        w.poll(threads)
        spans = [ThreadSpan(*t) for t in w.report()["threads"]]
        assert set(spans_used(spans, "source")) == {"mig/src/main"}
        assert set(spans_used(spans, "destination")) == {"main"}
    finally:
        proc.kill()
        proc.wait()
    assert proc_cpu.read_threads(proc.pid) == []  # gone: nothing, not an error


def test_the_watcher_finds_the_vm_by_its_pid_file_and_answers_report(tmp_path):
    """`qemu-cpu watch` as a site host runs it: ready once it has read the process, a report
    per "report" line, the end when stdin ends."""
    (tmp_path / "web.pid").write_text(f"{os.getpid()}\n")
    code = ("import sys; from pathlib import Path; from pcteleport.sites.libvirt import "
            f"proc_cpu; sys.exit(proc_cpu.watch('web', 30, Path({str(tmp_path)!r})))")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=os.environ)
    assert proc.stdin is not None and proc.stdout is not None
    ready = json.loads(proc.stdout.readline())
    assert ready == {"event": "ready", "pid": os.getpid()}
    proc.stdin.write("report\n")
    proc.stdin.flush()
    report = json.loads(proc.stdout.readline())
    proc.stdin.close()
    assert proc.wait(30) == 0
    assert report["event"] == "report" and report["ended"] is False
    names = {t[1] for t in report["threads"]}
    assert "main" in names
    assert all(t[3] >= t[2] for t in report["threads"])  # last reading never below the first


def test_a_vm_that_never_starts_is_an_error_line_not_a_hang(tmp_path):
    code = ("import sys; from pathlib import Path; from pcteleport.sites.libvirt import "
            f"proc_cpu; sys.exit(proc_cpu.watch('web', 0.3, Path({str(tmp_path)!r})))")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # stdin open: it waits
    assert proc.stdout is not None
    assert "no QEMU of VM web started" in json.loads(proc.stdout.readline())["message"]
    assert proc.wait(30) == 1


def test_each_side_sums_its_processes_per_gb_and_an_unmeasured_side_has_no_figure():
    pages = PageCounts(teleported=100_000, zero=100_000, sent=44_141)  # ~1 GB of guest memory
    procs = [ProcessCpu("source", "tokyo", "qemu", 0.5, {"mig/src/main": 0.5}),
             ProcessCpu("source", "tokyo", "relay send", 1.5),
             ProcessCpu("destination", "osaka", "relay recv", 0.8)]
    mc = stats.migration_cpu(procs, [], pages)
    assert mc is not None and mc.guest_memory_bytes == 244_141 * 4096
    assert (mc.send_s, mc.recv_s) == (2.0, 0.8)
    assert mc.send_s_per_gb == pytest.approx(2.0, abs=0.01)
    assert mc.recv_s_per_gb == pytest.approx(0.8, abs=0.01)
    partial = stats.migration_cpu(procs, [("destination", "QEMU at osaka: gone")], pages)
    assert partial is not None and partial.send_s == 2.0
    assert partial.recv_s is None and partial.recv_s_per_gb is None  # not 0.8: a part is missing
    assert partial.missing == ["destination: QEMU at osaka: gone"]
    assert stats.migration_cpu([], [], pages) is None
    assert stats.migration_cpu(procs, [], PageCounts()).send_s_per_gb is None  # nothing moved


class Host:
    def __init__(self, stdout: str, status: int = 0) -> None:
        self.stdout, self.status = stdout, status
        self.argv: list = []

    def run(self, argv, timeout=None):
        self.argv.append(argv)
        return SimpleNamespace(status=self.status, stdout=self.stdout, stderr="")


def _end(role: str, site, *evs: events.RelayEvent) -> RelayEnd:
    end = RelayEnd(site, role)
    end.events.extend(evs)
    return end


def test_relays_and_tunnel_ends_count_from_when_they_listened():
    tokyo = SimpleNamespace(name="tokyo", host=Host("100\n" + VCPU_LINE.replace(
        "(CPU 0/TCG)", "(pcteleport)")))  # 3.0 s so far
    osaka = SimpleNamespace(name="osaka", host=Host("", status=1))
    relays = SimpleNamespace(
        send=_end("send", tokyo, events.Listening(address="a", pid=7, cpu_s=0.5),
                  events.Summary(counters=CodecCounters(), cpu_s=2.5)),
        recv=_end("recv", osaka, events.Listening(address="b", pid=8)))  # no summary
    tunnel = SimpleNamespace(
        tin=_end("tunnel-in", tokyo, events.Listening(address="unix:/x", pid=9, cpu_s=0.75)),
        tout=_end("tunnel-out", osaka, events.Listening(address="c", pid=10, cpu_s=0.5)))
    prepared = SimpleNamespace(relays=relays, tunnel=tunnel)
    meter = CpuMeter(SimpleNamespace(vm="web", src=tokyo, dst=osaka))
    got = meter.qemu_and_tunnels(prepared) + meter.relays(prepared)  # type: ignore[arg-type]
    assert got == [ProcessCpu("source", "tokyo", "tunnel-in", 2.25),
                   ProcessCpu("source", "tokyo", "relay send", 2.0)]
    assert tokyo.host.argv[0][-1].endswith("cat /proc/9/stat")
    assert [side for side, _ in meter.missing] == ["destination", "destination"]
    assert "could not read the CPU of process 10 at osaka" in meter.missing[0][1]
    assert "relay recv at osaka: no CPU figure" in meter.missing[1][1]


class _WatchHost:
    """A site host whose `qemu-cpu watch` answers each request at once, as the real one does."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers, self.argv, self.fed = answers, None, []

    def spawn(self, argv, on_line):
        import threading

        host = self
        on_line('{"event": "ready", "pid": 4200}')

        class Proc:
            done = threading.Event()

            def feed(self, data: str, eof: bool = True) -> None:
                host.fed.append(data)
                if data.strip() in host.answers:
                    on_line(host.answers[data.strip()])

            def close(self) -> None:
                pass

            def how_it_ended(self) -> str:
                return "exit status 1"

        self.argv = argv
        return Proc()


def test_the_console_side_asks_the_watcher_and_reads_its_threads():
    report = {"event": "report", "pid": 4200, "ended": True,
              "threads": [[4200, "main", 1.0, 1.25, False], [4201, "CPU 0/TCG", 3.0, 9.0, False],
                          [4203, "mig/src/main", 0.0, 2.0, True]]}
    host = _WatchHost({"report": json.dumps(report)})
    site = SimpleNamespace(name="tokyo", host=host,
                           config=SimpleNamespace(relay_command=("pcteleport",)))
    w = proc_cpu.QemuCpuWatch(site, "web", "source")
    assert host.argv == ["pcteleport", "qemu-cpu", "watch", "--vm", "web"]
    assert w.wait("ready", 5)["pid"] == 4200
    assert spans_used(w.report(), "source") == {"mig/src/main": 2.0}
    w.close()
    assert host.fed == ["report\n", ""]  # the request, then the end of its stdin
    silent = proc_cpu.QemuCpuWatch(SimpleNamespace(name="osaka", host=_WatchHost({}),
                                                   config=site.config), "web", "destination")
    with pytest.raises(ProcCpuError, match="QEMU's CPU watch at osaka: no report within 1 s"):
        silent.report(timeout=1)


def test_a_meter_watches_both_qemus_and_a_side_it_could_not_watch_has_no_figure():
    src_report = {"event": "report", "pid": 1, "ended": True,
                  "threads": [[1, "main", 0.5, 1.0, False], [2, "mig/src/main", 0, 3.0, True],
                              [3, "CPU 0/TCG", 1.0, 50.0, False]]}
    config = SimpleNamespace(relay_command=("pcteleport",))
    tokyo = SimpleNamespace(name="tokyo", host=_WatchHost({"report": json.dumps(src_report)}),
                            config=config)
    osaka = SimpleNamespace(name="osaka", host=_WatchHost({"report": json.dumps(
        {"event": "error", "message": "no QEMU of VM web started within 600 s"})}),
        config=config)
    meter = CpuMeter(SimpleNamespace(vm="web", src=tokyo, dst=osaka))
    meter.start()
    meter.ready()
    prepared = SimpleNamespace(relays=None, tunnel=None)
    got = meter.qemu_and_tunnels(prepared) + meter.relays(prepared)  # type: ignore[arg-type]
    assert got == [ProcessCpu("source", "tokyo", "qemu", 3.0,
                              {"mig/src/main": 3.0})]  # the vCPU's 49 s and main's: not ours
    mc = stats.migration_cpu(got, meter.missing, PageCounts(sent=244_141))
    assert mc is not None and mc.send_s == 3.0 and mc.send_s_per_gb == pytest.approx(3.0, 0.01)
    assert mc.recv_s is None and mc.missing == [
        "destination: QEMU's CPU watch at osaka: no QEMU of VM web started within 600 s"]
    meter.close()
    assert tokyo.host.fed[-1] == "" and osaka.host.fed[-1] == ""  # both told to end
