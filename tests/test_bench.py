"""`pcteleport bench` (issue 7): the timeline analysis, the figures and the table on made-up
runs; the guest workload programs on this host against real data; then a quick variant of each
scenario (small VM, fast WAN) on the real lab through the same command as a full run, checking
that the table and the plots come out with sane values (teleport's WAN bytes below stock's).

The lab part runs as root; it reuses a lab that is up (adding its small VMs) or brings one up
and takes it down again at the end."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from xml.etree import ElementTree as ET

import pytest

from pcteleport.bench import report, svg
from pcteleport.bench.runner import BenchOptions, ModeRun, ordered_modes
from pcteleport.bench.scenario import GUEST_PROGRAMS, load
from pcteleport.bench.timeline import Point, summarise, to_points
from pcteleport.errors import PcteleportError
from pcteleport.lab import datafill, scenarios
from pcteleport.record_store import RecordStore
from pcteleport.records import (
    DiskMove,
    MigrationCpu,
    MigrationRecord,
    Mode,
    PageCounts,
    ProcessCpu,
    Result,
)
from tests.conftest import lab_instance, require

# --- analysis and output, on made-up timelines ---------------------------------------------


def _points(values: list[float], start: float = -5) -> list[Point]:
    return [Point(start + i, v) for i, v in enumerate(values)]


def test_recovery_counts_from_the_resume_until_three_seconds_at_80_percent():
    # 5 s at 100 before, migration 0..4 at 50, resume at 4: 20, 30, 85, 90, 100, 100 ...
    pts = _points([100] * 5 + [50] * 4 + [20, 30, 85, 90, 100, 100, 100, 100])
    s = summarise(pts, resume_t=4.0)
    assert s.baseline == 100
    assert s.during == pytest.approx(0.5)
    assert s.dip == pytest.approx(0.2)
    assert s.recovered_s == pytest.approx(2.0)


def test_no_dip_recovers_at_once_and_a_lost_level_never_recovers():
    flat = summarise(_points([100] * 20), resume_t=3.0)
    assert flat.recovered_s == pytest.approx(0.0) and flat.dip == pytest.approx(1.0)
    lost = summarise(_points([100] * 5 + [10] * 15), resume_t=2.0)
    assert lost.recovered_s is None and lost.after == pytest.approx(0.1)
    assert summarise(_points([0] * 10), resume_t=2.0).baseline is None


def test_guest_rows_move_onto_the_host_clock_with_the_offset_of_their_site():
    rows = [{"t": g, "blocks": 1} for g in range(1000, 1016)]
    # The guest clock is 0.5 s behind the host until the VM pauses at host 1010.5 (guest 1010);
    # it stands still for the 3 s pause, so afterwards it is 3.5 s behind.
    pts = to_points(rows, "blocks", t0_host=1005.5, offset_before=0.5, offset_after=3.5,
                    switch_host=1010.5)
    assert len(pts) == 14  # first and last rows are partial seconds
    by_guest = {g: p.t for g, p in zip(range(1001, 1015), pts, strict=True)}
    assert by_guest[1009] == pytest.approx(1009.5 - 1005.5)
    assert by_guest[1010] == pytest.approx(1013.5 - 1005.5)
    assert by_guest[1014] == pytest.approx(1017.5 - 1005.5)


def test_modes_run_in_the_interleaved_order_whatever_order_they_are_given():
    assert ordered_modes([Mode.DROP_CACHE, Mode.TELEPORT, Mode.STOCK]) == [
        Mode.STOCK, Mode.TELEPORT, Mode.DROP_CACHE]


def _run(mode: Mode, total_s: float, wan: int, downtime: float, dip_after: float) -> ModeRun:
    rec = MigrationRecord(run_id=f"r-{mode}", vm="web-small", from_site="tokyo",
                          to_site="osaka", mode=mode, result=Result.OK, total_s=total_s,
                          downtime_ms=downtime, wan_bytes=wan,
                          pages=PageCounts(teleported=5000 if mode is Mode.TELEPORT else 0),
                          disk_wan_bytes=2_000_000, memory_wan_bytes=wan - 2_000_000,
                          disks=[DiskMove("vda"), DiskMove("vdb", teleport=True,
                                 pages_teleported=5000 if mode is Mode.TELEPORT else 0)])
    reads = _points([1000] * 5 + [700] * int(total_s) + [dip_after] * 3 + [1000] * 10)
    work = _points([50] * 5 + [40] * int(total_s) + [50] * 13)
    r = ModeRun(mode, 1, rec, reads, work, site_after="osaka")
    r.read_summary = summarise(reads, total_s)
    r.workload_summary = summarise(work, total_s)
    return r


def _runs() -> list[ModeRun]:
    return [_run(Mode.STOCK, 20, 400_000_000, 300, 1000),
            _run(Mode.TELEPORT, 6, 100_000_000, 280, 1000),
            _run(Mode.DROP_CACHE, 8, 120_000_000, 310, 100)]


def test_table_gives_ratios_to_stock_and_the_recovery(tmp_path):
    opts = BenchOptions(load("web-small"), [Mode.STOCK, Mode.TELEPORT, Mode.DROP_CACHE],
                        "fast", before_s=5, after_s=13)
    md = report.markdown(opts, _runs(), "pcteleport bench --scenario web-small", "now")
    row = {line.split("|")[1].strip(): line for line in md.splitlines()
           if line.startswith("| ") and "/1 (1) |" in line}
    assert set(row) == {"stock", "teleport", "drop-cache"}
    assert "| 0.30× |" in row["teleport"]  # 6 s against 20 s
    assert "| 0.25× |" in row["teleport"]  # 100 MB against 400 MB
    assert "| 10 % |" in row["drop-cache"]  # its read dip after the resume
    assert "| 0.25× | 2.0 | 98.0 |" in row["teleport"]  # WAN bytes: disks, memory
    every = next(line for line in md.splitlines() if line.startswith("| 1 | teleport |"))
    assert "| 100.0 | 2.0 | 98.0 |" in every and "| vda 0, vdb 5,000 |" in every
    tel = next(r for r in report.rows(_runs()) if r.mode == "teleport")
    drop = next(r for r in report.rows(_runs()) if r.mode == "drop-cache")
    assert tel.read_recovered_s == pytest.approx(0) and drop.read_recovered_s == pytest.approx(3)


def test_the_table_gives_each_modes_prediction_error_and_its_time_over_t_min():
    from pcteleport.records import ModePrediction

    runs = _runs()
    for r in runs:
        rec = r.record
        assert rec.total_s
        rec.prediction = ModePrediction(rec.mode, int(rec.wan_bytes * 1.1), rec.total_s * 0.9)
        rec.t_min_s = rec.total_s / 2
    opts = BenchOptions(load("web-small"), [Mode.STOCK, Mode.TELEPORT, Mode.DROP_CACHE], "fast")
    md = report.markdown(opts, runs, "b", "now")
    section = md.split("## Predicted before each run")[1].split("## Every run")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "mode" not in line]
    assert len(rows) == 3
    for line in rows:
        assert "| +10 % |" in line and "| -10 % |" in line and line.endswith("| 2.00× |")
    unpredicted = _runs()  # runs that kept no prediction say so, they are not 0 % off
    md = report.markdown(opts, unpredicted, "b", "now")
    section = md.split("## Predicted before each run")[1].split("## Every run")[0]
    assert "| – | – |" in section and "%" not in section


def test_without_a_stock_run_there_are_no_ratios():
    opts = BenchOptions(load("web-small"), [Mode.TELEPORT], "fast")
    md = report.markdown(opts, [r for r in _runs() if r.mode is Mode.TELEPORT], "b", "now")
    row = next(line for line in md.splitlines() if line.startswith("| teleport |"))
    assert "×" not in row and "| – |" in row


def test_written_results_hold_json_markdown_and_svgs(tmp_path):
    opts = BenchOptions(load("web-small"), [Mode.STOCK, Mode.TELEPORT], "fast")
    md = report.write(tmp_path, opts, _runs()[:2], "pcteleport bench")
    stem = str(md)[:-3]
    data = json.loads(Path(stem + ".json").read_text())
    assert [r["mode"] for r in data["runs"]] == ["stock", "teleport"]
    assert data["runs"][1]["record"]["wan_bytes"] == 100_000_000
    assert data["machine"]["cores"] >= 1
    bars = ET.fromstring(Path(stem + "-bars.svg").read_text())
    rects = [e for e in bars.iter() if e.tag.endswith("rect")]
    assert len(rects) == 1 + 3 * 2  # background, 3 panels x 2 modes
    for name in ("-reads.svg", "-workload.svg"):
        tree = ET.fromstring(Path(stem + name).read_text())
        assert len([e for e in tree.iter() if e.tag.endswith("polyline")]) == 2


def test_a_written_run_renders_again_from_its_json(tmp_path):
    opts = BenchOptions(load("web-small"), [Mode.STOCK, Mode.TELEPORT], "fast")
    md = report.write(tmp_path, opts, _runs()[:2], "pcteleport bench")
    first = md.read_text()
    md.unlink()
    again = report.rerender(Path(str(md)[:-3] + ".json"))
    assert again.read_text() == first


def test_an_insecure_run_says_so_in_its_name_table_and_json(tmp_path):
    """`bench --insecure` beside a plain run is the cost of encryption: the two must not be
    mistaken for each other, nor lose the difference when rendered again."""
    runs = _runs()[:2]
    runs[0].record.wan_encryption = "none (--insecure)"
    runs[1].record.wan_encryption = "none (--insecure)"
    opts = BenchOptions(load("web-small"), [Mode.STOCK, Mode.TELEPORT], "fast", insecure=True)
    md = report.write(tmp_path, opts, runs, "pcteleport bench --insecure")
    assert "-insecure-" in md.name
    text = md.read_text()
    assert "**no encryption on the WAN** (`--insecure`)" in text
    assert "WAN encryption (as the records say): stock: none (--insecure); teleport: none " \
           "(--insecure)." in text
    assert json.loads(Path(str(md)[:-3] + ".json").read_text())["insecure"] is True
    md.unlink()
    assert report.rerender(Path(str(md)[:-3] + ".json")).read_text() == text
    secure = BenchOptions(load("web-small"), [Mode.STOCK], "fast")
    assert "no encryption" not in report.markdown(secure, _runs()[:1], "b", "now")


def test_bench_insecure_and_encryption_cost_reach_the_runner(monkeypatch):
    from pcteleport import cli
    from pcteleport.bench import runner

    got = []
    monkeypatch.setattr(runner, "main", lambda *a, **k: got.append((a, k)) or 0)
    assert cli.main(["bench", "--scenario", "web-small", "--insecure"]) == 0
    assert got[0][0][-1] is True and got[0][1]["encryption_cost"] is False
    assert cli.main(["bench", "--scenario", "web-small", "--encryption-cost"]) == 0
    assert got[1][0][-1] is False and got[1][1]["encryption_cost"] is True


def _cpu_run(mode: Mode, variant: str, total_s: float, downtime: float, send: float | None,
             recv: float | None, round_no: int = 1) -> ModeRun:
    r = _run(mode, total_s, 100_000_000, downtime, 1000)
    r.round, r.variant = round_no, variant
    r.record.migration_cpu = MigrationCpu(
        send_s=send, recv_s=recv, guest_memory_bytes=10**9, send_s_per_gb=send,
        recv_s_per_gb=recv,
        processes=[ProcessCpu("source", "tokyo", "qemu", send or 0.0,
                              {"main": 0.25, "mig/src/main": (send or 0.25) - 0.25}),
                   ProcessCpu("destination", "osaka", "qemu", recv or 0.0, {"main": recv or 0})],
        missing=[] if recv is not None else ["destination: QEMU at osaka: gone"])
    return r


def test_the_encryption_cost_table_puts_each_mode_encrypted_beside_clear_with_ratios():
    runs = [_cpu_run(Mode.STOCK, "encrypted", 12, 300, 2.0, 1.5),
            _cpu_run(Mode.STOCK, "clear", 10, 250, 1.0, 0.5),
            _cpu_run(Mode.TELEPORT, "clear", 6, 200, 0.5, None),
            _cpu_run(Mode.TELEPORT, "encrypted", 6, 220, 1.0, 0.75),
            _cpu_run(Mode.STOCK, "clear", 10, 250, 1.0, 0.5, round_no=2),
            _cpu_run(Mode.STOCK, "encrypted", 12, 300, 2.0, 1.5, round_no=2)]
    opts = BenchOptions(load("web-small"), [Mode.STOCK, Mode.TELEPORT], "fast",
                        encryption_cost=True, repeat=2)
    md = report.markdown(opts, runs, "pcteleport bench --encryption-cost", "now")
    section = md.split("## The cost of encryption")[1].split("## Predicted")[0]
    table = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
             for line in section.splitlines() if line.startswith("| stock |")
             or line.startswith("| teleport |")}
    # stock: 12 s against 10 s in clear; 300 ms against 250; CPU 2.0 / 1.0, 1.5 / 0.5
    assert table["stock"] == ["12.0", "10.0", "1.20×", "300", "250", "1.20×",
                              "2.00", "1.00", "2.00×", "1.50", "0.50", "3.00×"]
    # teleport: the clear run's destination was not all measured: no figure, no ratio
    assert table["teleport"][6:] == ["1.00", "0.50", "2.00×", "0.75", "–", "–"]
    every = [line for line in section.splitlines() if line.startswith("| 1 | teleport clear |")]
    assert len(every) == 1 and "destination: QEMU at osaka: gone" in every[0]
    assert "src qemu 0.50 (main 0.25, mig/src/main 0.25)" in every[0]
    # the main table: each variant its own row, its ratios to stock of the same variant
    main = {line.split("|")[1].strip(): line for line in md.split("## The cost")[0].splitlines()
            if line.startswith("| ") and "/" in line.split("|")[2]}
    assert {"stock encrypted", "stock clear", "teleport clear", "teleport encrypted"} <= set(main)
    assert "| 6.0 | 0.60× |" in main["teleport clear"]  # 6 s against stock clear's 10 s
    assert "| 6.0 | 0.50× |" in main["teleport encrypted"]  # against stock encrypted's 12 s
    assert "encryption cost" not in report.markdown(
        BenchOptions(load("web-small"), [Mode.STOCK], "fast"), _runs()[:1], "b", "now").lower()


def test_an_encryption_cost_run_renders_again_from_its_json(tmp_path):
    runs = [_cpu_run(Mode.STOCK, "encrypted", 12, 300, 2.0, 1.5),
            _cpu_run(Mode.STOCK, "clear", 10, 250, 1.0, 0.5)]
    opts = BenchOptions(load("web-small"), [Mode.STOCK], "fast", encryption_cost=True)
    md = report.write(tmp_path, opts, runs, "pcteleport bench --encryption-cost")
    assert "-encryption-cost-" in md.name
    text = md.read_text()
    md.unlink()
    assert report.rerender(Path(str(md)[:-3] + ".json")).read_text() == text


class _Guest:
    def __init__(self, *_a: object) -> None:
        pass

    def install_programs(self, site: str) -> None:
        pass

    def run(self, site: str, script: str, timeout: float = 60) -> str:
        return ""

    def start(self, site: str, name: str, argv: list[str]) -> int:
        return 1

    def wait_rows(self, site: str, names: list[str]) -> None:
        pass

    def clock_offset(self, site: str) -> float:
        return 0.0

    def stop(self, site: str, pids: list[int]) -> None:
        pass

    def rows(self, site: str, name: str) -> list:
        return []

    def errors(self, site: str, name: str) -> str:
        return ""


class _Backend:
    """Moves the VM where each request says, and keeps the requests."""

    cfg = None

    def __init__(self) -> None:
        self.at, self.requests = "tokyo", []

    def vms(self, site: str) -> list:
        return [SimpleNamespace(name="web-small", state="running")] if site == self.at else []

    def migrate(self, request, on_event) -> MigrationRecord:
        self.requests.append(request)
        self.at = request.to_site
        return MigrationRecord(run_id="r", vm=request.vm_uuid, from_site="x",
                               to_site=request.to_site, mode=request.mode, result=Result.OK,
                               total_s=1.0)

    def prediction_inputs(self, *a: object) -> None:
        raise PcteleportError("not measured here")

    def engine_warning(self, vm: str) -> str:
        return ""

    def forget_wan_measurements(self, profile: str) -> None:
        pass

    def close(self) -> None:
        pass


def test_encryption_cost_runs_each_mode_encrypted_and_clear_in_turn(monkeypatch):
    """The runner's order with a double for the lab: per round and mode, the pair back to back
    (swapped in the next round), each measured migration asking for its CPU, the clear one
    in clear; the trips home are neither measured nor in clear."""
    from pcteleport.bench import guest as guest_mod
    from pcteleport.bench import runner

    monkeypatch.setattr(guest_mod, "LabGuest", _Guest)
    monkeypatch.setattr(runner.wan, "use_profile", lambda *a: None)
    backend = _Backend()
    opts = BenchOptions(load("web-small"), [Mode.TELEPORT, Mode.STOCK], "fast", repeat=2,
                        before_s=0, after_s=0, max_downtime_ms=None, encryption_cost=True)
    runs = runner.Bench(opts, say=lambda _t: None, backend=backend).run()  # type: ignore[arg-type]
    assert [(r.round, r.label) for r in runs] == [
        (1, "stock encrypted"), (1, "stock clear"), (1, "teleport encrypted"),
        (1, "teleport clear"), (2, "stock clear"), (2, "stock encrypted"),
        (2, "teleport clear"), (2, "teleport encrypted")]
    measured = [q for q in backend.requests if q.to_site == "osaka"]
    assert [(q.mode, q.insecure) for q in measured] == [
        (r.mode, r.variant == "clear") for r in runs]
    assert all(q.measure_cpu for q in measured)
    home = [q for q in backend.requests if q.to_site == "tokyo"]
    assert len(home) == 8 and not any(q.insecure or q.measure_cpu for q in home)


def test_a_stopped_bench_aborts_the_migration_in_flight_and_starts_no_other(monkeypatch):
    """Ctrl-C while a measured migration runs (the runner's double for the lab): the backend is
    asked to abort that VM's migration, no other mode runs and the VM is not brought home;
    with nothing in flight, stop() says so (the SIGINT handler then interrupts at once)."""
    from pcteleport.bench import guest as guest_mod
    from pcteleport.bench import runner

    monkeypatch.setattr(guest_mod, "LabGuest", _Guest)
    monkeypatch.setattr(runner.wan, "use_profile", lambda *a: None)
    aborted: list[str] = []

    class Interrupted(_Backend):
        def migrate(self, request, on_event) -> MigrationRecord:
            self.requests.append(request)
            assert bench.stop()  # the operator's Ctrl-C, while this one runs
            return MigrationRecord(run_id="r", vm=request.vm_uuid, from_site="tokyo",
                                   to_site=request.to_site, mode=request.mode,
                                   result=Result.ABORTED, runs_at="tokyo")

        def abort(self, vm: str) -> None:
            aborted.append(vm)

    backend = Interrupted()
    opts = BenchOptions(load("web-small"), [Mode.TELEPORT, Mode.STOCK], "fast", repeat=2,
                        before_s=0, after_s=0, max_downtime_ms=None)
    bench = runner.Bench(opts, say=lambda _t: None, backend=backend)  # type: ignore[arg-type]
    runs = bench.run()
    deadline = time.monotonic() + 5  # (the abort goes from a thread of its own)
    while not aborted and time.monotonic() < deadline:
        time.sleep(0.05)
    assert aborted == ["web-small"]
    assert [(r.mode, r.record.result) for r in runs] == [(Mode.STOCK, Result.ABORTED)]
    assert [q.to_site for q in backend.requests] == ["osaka"]  # not brought home
    assert bench.stopped_where == "VM web-small is running at tokyo"
    assert not bench.stop()  # nothing in flight any more


def test_bar_heights_follow_the_values():
    doc = ET.fromstring(svg.bar_panels("t", [("x", [svg.Bar("stock", 10.0),
                                                    svg.Bar("teleport", 2.5)])]))
    heights = [float(e.get("height")) for e in doc.iter() if e.tag.endswith("rect")][1:]
    assert heights[0] == pytest.approx(4 * heights[1])


# --- the scenarios and their guest programs ------------------------------------------------


def test_every_scenario_declares_its_vm_warm_and_measure():
    for name in scenarios.available():
        s = load(name)
        assert s.memory_mib >= 128 and s.read_paths
        if s.has_workload:
            assert (GUEST_PROGRAMS / s.workload[0]).is_file() and s.metric and s.unit
    assert load("web").memory_mib == 1024 and "web_server.py" in load("web").warm_command
    for name in ("web", "web-small"):  # the server is on the data disk, beside the warm script
        assert scenarios.load(name).warm_programs == ("web_server.py", "writejournal.py")
    assert load("tpcc").workload[0] == "tpcc.py" and load("tpcc").unit == "transactions/s"
    assert not load("idle").has_workload
    assert load("tpcc").auto_converge and load("tpcc-small").auto_converge
    assert not load("web").auto_converge


def _guest_program(*args: str, timeout: float = 60) -> list[dict]:
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True,
                         timeout=timeout, cwd=GUEST_PROGRAMS)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_reader_counts_blocks_every_second(tmp_path):
    datafill.fill_html(tmp_path, 2)
    rows = _guest_program("reader.py", str(tmp_path / "www"), "--duration", "2.5")
    assert len(rows) >= 2
    assert all(r["t"] == rows[0]["t"] + i for i, r in enumerate(rows))
    assert max(r.get("blocks", 0) for r in rows) > 100


def test_web_client_measures_a_real_http_server(tmp_path):
    datafill.fill_html(tmp_path, 2)
    port = 18000 + os.getpid() % 1000
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                               "127.0.0.1", "--directory", str(tmp_path / "www")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        rows = _guest_program("web_client.py", "--root", str(tmp_path / "www"), "--port",
                              str(port), "--duration", "2.5")
    finally:
        server.terminate()
        server.wait(5)
    done = [r for r in rows if r.get("requests")]
    assert done and not any(r.get("errors") for r in rows)
    assert all(r["bytes"] / r["requests"] > 8000 for r in done)  # pages are 8-96 KiB
    assert all(0 < r["latency_ms_mean"] <= r["latency_ms_max"] for r in done)


# --- on the lab: a quick variant of each scenario through `pcteleport bench` ----------------

LAB_VMS = ("web-small", "idle-small", "tpcc-small")
CLI = [sys.executable, "-m", "pcteleport.cli"]


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


# A lab instance of its own (console/lab/topology.py), so the test never moves or tears
# down VMs of the default lab an operator or a benchmark may be using.
INSTANCE = "b"


@pytest.fixture(scope="module")
def lab() -> Iterator[None]:
    with lab_instance(INSTANCE):  # the CLI subprocesses inherit it
        yield from _lab()


def _lab() -> Iterator[None]:
    require(os.geteuid() == 0, "the lab needs root")
    for tool in ("libvirtd", "qemu-system-x86_64", "tc"):
        require(shutil.which(tool) is not None or Path("/usr/sbin", tool).exists(),
                f"{tool} is not installed (scripts/setup.sh)")
    was_up = _cli("lab", "status", "--json", "--no-measure").returncode == 0
    up = _cli("lab", "up", "--vms", ",".join(LAB_VMS))
    assert up.returncode == 0, up.stderr or up.stdout
    yield
    if not was_up:
        _cli("lab", "down")


def _bench(tmp_path: Path, scenario: str, modes: str) -> dict:
    proc = _cli("bench", "--scenario", scenario, "--modes", modes, "--wan", "fast",
                "--before", "4", "--after", "8", "--out", str(tmp_path), "--json")
    assert proc.stdout.strip(), proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    data = json.loads(Path(out["json"]).read_text())
    stem = out["json"][:-5]
    md = Path(out["markdown"]).read_text()
    for name in ("-bars.svg", "-reads.svg"):
        ET.fromstring(Path(stem + name).read_text())  # well-formed
    for run in data["runs"]:
        rec = run["record"]
        where = f"{scenario} {run['mode']}: {rec.get('error')}"
        assert f"| {run['mode']} |" in md
        assert run["read_summary"]["baseline"] > 0, "the reader ran before the migration"
        if run["site_after"] != "osaka":
            # The mode failed before moving the VM (a gap of the migration service or agent):
            # the bench must say why, and leave the VM running where it was.
            assert run["site_after"] == "tokyo" and rec["result"] != "ok" and rec["error"]
            assert f"| {run['mode']} | 0/1 (0) |" in md, where
            continue
        assert rec["total_s"] > 0 and rec["wan_bytes"] > 0, where
        assert rec["downtime_ms"] is not None and rec["downtime_ms"] > 0, where
        ts = [t for t, _v in run["reads"]]
        assert min(ts) < 0 < rec["total_s"] < max(ts), "the reads span the migration"
        # The console's compare screen reads the store: the throughput measured after the
        # migration must be there too, not only in the bench's JSON.
        stored = {r.run_id: r for r in RecordStore().load_all().records}
        assert stored[rec["run_id"]].throughput_after is not None, where
    return {r["mode"]: r for r in data["runs"]} | {"_md": md, "_stem": stem}


@pytest.mark.root
@pytest.mark.lab
@pytest.mark.slow
def test_web_small_teleport_against_stock(lab, tmp_path):
    """The bench's table, plots and workload with the two modes it compares first. zstd and
    drop-cache ran here too (another 170 s of the suite) and tested no more of the bench: every
    mode migrates in test_every_mode_migrates_there_and_back."""
    runs = _bench(tmp_path, "web-small", "stock,teleport")
    assert {"stock", "teleport"} == {m for m in runs if not m.startswith("_")}
    assert runs["stock"]["site_after"] == runs["teleport"]["site_after"] == "osaka"
    tel, stock = runs["teleport"]["record"], runs["stock"]["record"]
    assert tel["pages"]["teleported"] > 0
    assert tel["wan_bytes"] < stock["wan_bytes"]
    assert Path(runs["_stem"] + "-workload.svg").exists()
    assert max(v for _t, v in runs["stock"]["workload"]) > 0  # the web client got answers


@pytest.mark.root
@pytest.mark.lab
@pytest.mark.slow
def test_tpcc_small_teleport(lab, tmp_path):
    """The scenario's [bench] settings reach the runs (auto-converge, and with it the guest's
    disk writes waiting for the mirror), and its workload runs. Teleport alone: stock beside
    it cost 70 s of the suite; teleport against stock is test_web_small_teleport_against_stock's."""
    runs = _bench(tmp_path, "tpcc-small", "teleport")
    assert "auto-converge for every mode" in runs["_md"]  # as tpcc-small.toml says
    log = [line["text"] for line in runs["teleport"]["record"]["log"]]
    assert any("auto-converge:" in line for line in log)
    assert any("libvirt's synchronous writes" in line for line in log)
    assert runs["teleport"]["record"]["pages"]["teleported"] > 0
    assert max(v for _t, v in runs["teleport"]["workload"]) > 0  # transactions ran


@pytest.mark.root
@pytest.mark.lab
@pytest.mark.slow
def test_idle_small_teleport(lab, tmp_path):
    """A scenario without a workload (teleport alone: the other modes' bench runs are above;
    stock here cost 40 s of the suite and tested nothing more)."""
    runs = _bench(tmp_path, "idle-small", "teleport")
    assert not Path(runs["_stem"] + "-workload.svg").exists()  # idle has no workload
    assert runs["teleport"]["record"]["wan_bytes"] > 0


@pytest.mark.root
@pytest.mark.lab
@pytest.mark.slow
def test_ctrl_c_of_bench_aborts_its_migration_and_frees_the_vm(lab, tmp_path):
    """SIGINT to `pcteleport bench` while a measured migration copies (disks or memory): it is
    aborted (its record says so), no other run starts, the VM runs on at tokyo and the last
    line says so. libvirt holds no job on the VM afterwards, so a migration right after
    goes through (an interrupted bench once left one for minutes, refusing every migration)."""
    begun = time.time()
    proc = subprocess.Popen([*CLI, "bench", "--scenario", "web-small", "--modes",
                             "stock,teleport", "--wan", "default", "--before", "1", "--after",
                             "30", "--out", str(tmp_path), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    seen: list[str] = []
    try:
        assert proc.stderr is not None
        measured = False  # (a bring-home first copies memory too: not that one)
        for line in proc.stderr:
            seen.append(line)
            measured = measured or "round 1: stock migration tokyo -> osaka" in line
            if measured and " migration active, " in line:
                proc.send_signal(signal.SIGINT)
                break
        stdout, rest = proc.communicate(timeout=240)
    finally:
        proc.kill()
        _cli("lab", "wan", "fast")
    err = [*seen, *rest.splitlines(keepends=True)]
    assert any(" migration active, " in line for line in seen), "".join(err[-40:])
    assert not any("Traceback" in line for line in err), "".join(err)
    assert proc.returncode == 130, "".join(err[-40:])
    assert stdout == ""
    assert any("bench: stopping: aborting the migration of web-small" in line for line in err)
    assert not any("round 1: teleport" in line for line in err)  # no other run started
    last = err[-1].strip()
    assert last.startswith("pcteleport: bench stopped by the operator; the 1 migration(s) "
                           "measured so far are in "), last
    assert last.endswith("; VM web-small is running at tokyo"), last
    recs = [r for r in RecordStore().load_all().records
            if r.vm == "web-small" and r.started_at >= begun and r.to_site == "osaka"]
    assert [(r.result, r.runs_at) for r in recs] == [(Result.ABORTED, "tokyo")], recs
    after = _cli("migrate", "web-small", "--to", "osaka", "--mode", "stock", "--no-predict",
                 "--json")
    assert after.returncode == 0, after.stderr[-2000:]
    assert json.loads(after.stdout.strip().splitlines()[-1])["runs_at"] == "osaka"
