"""Workloads that write (issue 13 item 5) and the check that nothing they wrote is lost (item 6),
on this host: tpcc commits to its SQLite database and journals each commit's rows, the web
server appends its access log and journals each synced range, and the guest agent's
check-writes finds every journaled write — and names the one that went missing."""

from __future__ import annotations

import itertools
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from pcteleport.bench.scenario import GUEST_PROGRAMS, load
from pcteleport.guest import agent
from pcteleport.lab import datafill


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _journal(directory: Path) -> list[dict]:
    return [json.loads(line) for p in sorted(directory.glob("*.jsonl"))
            for line in p.read_text().splitlines()]


@pytest.fixture(scope="module")
def tpcc_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict]]:
    root = tmp_path_factory.mktemp("tpcc")
    datafill.fill_sqlite(root, 12)
    db, journals = root / "db" / "tpcc.sqlite", root / "journals"
    # the scenario's own command line, its guest paths made this host's
    argv = [str(db) if a == "/data/db/tpcc.sqlite" else a for a in load("tpcc").workload]
    out = subprocess.run([sys.executable, *argv, "--journal", str(journals / "tpcc.jsonl"),
                          "--duration", "2.5"],
                         capture_output=True, text=True, timeout=120, cwd=GUEST_PROGRAMS)
    assert out.returncode == 0, out.stderr
    return db, journals, [json.loads(line) for line in out.stdout.splitlines()]


def test_tpcc_commits_to_its_database_and_journals_every_commit(tpcc_run):
    db, journals, rows = tpcc_run
    mix = {k for r in rows for k in r} & {"new_order", "payment", "order_status", "delivery",
                                           "stock_level"}
    assert mix == {"new_order", "payment", "order_status", "delivery", "stock_level"}
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    history = con.execute("SELECT count(*) FROM history").fetchone()[0]
    new_orders = con.execute("SELECT count(*) FROM orders WHERE o_id > 3000").fetchone()[0]
    # the per-second rows leave out the last, unfinished second
    assert 0 < sum(r.get("payment", 0) for r in rows) <= history
    assert 0 < sum(r.get("new_order", 0) for r in rows) <= new_orders
    entries = _journal(journals)
    # one line for each payment, two for each new order (the order and its lines)
    assert sum("FROM history" in e["sql"] for e in entries) == history
    assert sum("FROM orders" in e["sql"] for e in entries) == new_orders
    assert len(entries) == history + 2 * new_orders
    assert all(e["sql"].startswith("SELECT") and e["sqlite"] == str(db) for e in entries)


def test_check_writes_finds_every_commit_then_names_the_one_lost(tpcc_run):
    db, journals, _rows = tpcc_run
    ok = agent.check_writes(str(journals))
    assert ok["failed"] == 0 and ok["complete"]
    assert ok["checked"] == ok["entries"] == len(_journal(journals)) > 0
    con = sqlite3.connect(db)
    h_id = con.execute("SELECT max(h_id) FROM history").fetchone()[0]
    con.execute("UPDATE history SET h_amount = h_amount + 0.01 WHERE h_id=?", (h_id,))
    con.commit()
    try:
        bad = agent.check_writes(str(journals))
        assert bad["failed"] == 1 and "history" in bad["failures"][0]
        assert f"[{h_id}]" in bad["failures"][0]
    finally:
        con.execute("UPDATE history SET h_amount = h_amount - 0.01 WHERE h_id=?", (h_id,))
        con.commit()


def test_web_server_logs_every_request_and_journals_what_it_synced(tmp_path):
    datafill.fill_html(tmp_path, 1)
    port, log, journals = _free_port(), tmp_path / "log" / "access.log", tmp_path / "j"
    server = subprocess.Popen(
        [sys.executable, "web_server.py", "--root", str(tmp_path / "www"), "--port", str(port),
         "--log", str(log), "--journal", str(journals / "web-access.jsonl")],
        cwd=GUEST_PROGRAMS, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
                break
            except OSError:
                assert time.monotonic() < deadline, "the web server did not answer"
                time.sleep(0.1)
        for _ in range(20):
            with pytest.raises(urllib.error.HTTPError):
                urllib.request.urlopen(f"http://127.0.0.1:{port}/missing.html", timeout=5)
        # a second server on the same port says it runs already, and exits 0
        again = subprocess.run([sys.executable, "web_server.py", "--root", str(tmp_path),
                                "--port", str(port), "--log", str(tmp_path / "other.log"),
                                "--journal", str(tmp_path / "other.jsonl")],
                               cwd=GUEST_PROGRAMS, capture_output=True, text=True, timeout=30)
        assert again.returncode == 0 and "already" in again.stderr
        assert not (tmp_path / "other.jsonl").exists()
        deadline = time.monotonic() + 10
        while sum(e["length"] for e in _journal(journals)) < log.stat().st_size:
            assert time.monotonic() < deadline, "the log was not journaled within 10 s"
            time.sleep(0.2)
    finally:
        server.terminate()
        server.wait(5)
    lines = log.read_text().splitlines()
    assert len(lines) == 21 and sum('"GET /missing.html HTTP/1.1" 404' in x for x in lines) == 20
    entries = _journal(journals)
    assert entries[0]["offset"] == 0 and all(
        a["offset"] + a["length"] == b["offset"] for a, b in itertools.pairwise(entries))
    assert agent.check_writes(str(journals))["failed"] == 0
    data = bytearray(log.read_bytes())
    data[len(data) // 2] ^= 0x20  # one bit of one logged line
    log.write_bytes(bytes(data))
    bad = agent.check_writes(str(journals))
    assert bad["failed"] == 1 and str(log) in bad["failures"][0]
    log.write_bytes(bytes(data[:10]))
    short = agent.check_writes(str(journals))
    assert short["failed"] == len(entries) and "has 10 bytes" in short["failures"][0]


def test_check_writes_ignores_an_unfinished_last_line_and_stops_at_its_limit(tmp_path):
    data = tmp_path / "f"
    data.write_bytes(b"hello")
    line = {"file": str(data), "offset": 0, "length": 5, "blake2b": agent._digest(b"hello")}
    (tmp_path / "a.jsonl").write_text(json.dumps(line) + "\n" + json.dumps(line)[:20])
    result = agent.check_writes(str(tmp_path))
    assert (result["entries"], result["failed"], result["complete"]) == (1, 0, True)
    assert agent.check_writes(str(tmp_path / "none"))["journals"] == []
    (tmp_path / "b.jsonl").write_text(json.dumps(line) + "\n" * 0 + "\n" + "{not json\n")
    result = agent.check_writes(str(tmp_path))
    assert result["failed"] == 1 and "b.jsonl line 2" in result["failures"][0]
    assert not agent.check_writes(str(tmp_path), limit_s=1e-9)["complete"]


def test_agent_serves_check_writes_and_refuses_bad_limits(tmp_path):
    server = agent.Server(os.open(os.devnull, os.O_RDONLY), 1, reconnecting=False)
    sent: list[dict] = []
    server.send = sent.append  # type: ignore[method-assign]
    server.handle(json.dumps({"id": 1, "method": "check-writes",
                              "params": {"dir": str(tmp_path)}}))
    server.handle(json.dumps({"id": 2, "method": "check-writes",
                              "params": {"limit_s": "Infinity"}}))
    assert sent[0]["result"]["failed"] == 0 and sent[0]["result"]["journals"] == []
    assert sent[1]["error"]["code"] == "bad-request"


class _Agent:
    def __init__(self, answer: dict | Exception) -> None:
        self.answer = answer

    def call(self, method: str, params: dict, timeout: float) -> dict:
        assert method == "check-writes" and params["limit_s"] > 0
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def _destination():
    from types import SimpleNamespace

    from pcteleport.records import MigrationRecord, Mode
    from pcteleport.sites.libvirt.migration.destination import Destination

    rec = MigrationRecord(run_id="r", vm="web", from_site="tokyo", to_site="osaka",
                          mode=Mode.STOCK)
    lines: list[str] = []
    plan = SimpleNamespace(vm="web", dst=SimpleNamespace(name="osaka"))
    return Destination(plan, rec, lines.append), rec, lines  # type: ignore[arg-type]


def test_the_migration_records_the_write_check_and_fails_on_a_lost_write():
    from pcteleport.errors import PcteleportError
    from pcteleport.sites.guest_agent import AgentRefused
    from pcteleport.sites.libvirt.migration.plan import MigrationFailed

    dest, rec, lines = _destination()
    ok = {"journals": [{"path": "a"}], "entries": 40, "checked": 40, "failed": 0,
          "failures": [], "elapsed_ms": 1500}
    dest.check_writes(_Agent(ok))  # type: ignore[arg-type]
    assert rec.write_check is not None and rec.write_check.complete
    assert lines[-1] == ("writes checked at osaka: 40 journaled writes in 1 journal all there "
                         "(1.5 s in the guest)")
    lost = dict(ok, failed=2, failures=["j line 3: /data/x bytes 0-5 differ", "j line 4: ..."])
    with pytest.raises(MigrationFailed, match=r"2 of 40 journaled writes .*j line 3: /data/x"):
        dest.check_writes(_Agent(lost))  # type: ignore[arg-type]
    assert rec.write_check.failed == 2
    dest, rec, lines = _destination()
    dest.check_writes(_Agent(AgentRefused(  # type: ignore[arg-type]
        "guest agent of web: guest agent (check-writes): unknown method 'check-writes'")))
    assert rec.write_check is None and "no check-writes" in lines[-1]
    with pytest.raises(MigrationFailed, match="checking the guest's writes"):
        dest.check_writes(_Agent(PcteleportError("port closed")))  # type: ignore[arg-type]
