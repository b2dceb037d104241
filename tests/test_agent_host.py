"""The guest agent run on the host itself (it is stdlib Python): CLI, the JSON-lines protocol
over stdio, both host-side clients, the map's text and binary forms. The in-guest behaviour
(module, fallback, virtio-serial) is tested in test_guest_map.py."""

from __future__ import annotations

import ast
import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pcteleport.guest import agent
from pcteleport.sites.agent_client import AgentRequestError, AsyncAgentClient
from pcteleport.teleport import mapfile

ROOT = Path(__file__).resolve().parent.parent
AGENT = ROOT / "guest" / "agent.py"


def _agent(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(AGENT), *args], input=stdin, capture_output=True,
                          text=True, timeout=60)


def test_agent_is_one_stdlib_file_for_python_3_9() -> None:
    tree = ast.parse(AGENT.read_text(), feature_version=(3, 9))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)


def test_composition_lines_add_up() -> None:
    out = _agent("composition", "--count", "2", "--interval", "0.1")
    assert out.returncode == 0, out.stderr
    snaps = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(snaps) == 2
    for s in snaps:
        assert s["free"] + s["anon"] + s["shmem"] + s["page_cache"] + s["kernel_other"] == \
            s["total"]
        assert s["clean"] + s["dirty"] + s["writeback"] == s["page_cache"]
        assert s["source"] in ("module", "fallback")


def test_map_goes_ahead_of_the_guests_work_and_the_checks_beside_it() -> None:
    """Requests run at their own nice value (this thread only) and leave it as it was."""
    import os
    import threading

    assert agent.NICE_FOR["map"] < 0
    assert agent.NICE_FOR["verify"] == agent.NICE_FOR["check-writes"] == 0
    seen: dict[str, int] = {}

    def probe() -> None:  # a thread of its own: its nice value is its own on Linux
        before = os.getpriority(os.PRIO_PROCESS, 0)
        with agent.at_nice(before + 3):
            seen["inside"] = os.getpriority(os.PRIO_PROCESS, 0) - before
        with agent.at_nice(None):
            seen["none"] = os.getpriority(os.PRIO_PROCESS, 0) - before
        seen["after"] = os.getpriority(os.PRIO_PROCESS, 0) - before

    t = threading.Thread(target=probe)
    t.start()
    t.join()
    assert seen == {"inside": 3, "none": 0, "after": 0}


def test_files_on_lists_regular_files_and_stays_out_of_mounts_below(tmp_path, monkeypatch) -> None:
    """The walk for verify and the fallback map: every regular file, however deep; never a
    FIFO, a symlink or a directory another filesystem is mounted on."""
    import os

    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "mnt" / "inner").mkdir(parents=True)
    for rel in ("top", "a/one", "a/b/two", "mnt/inner/other-fs"):
        (tmp_path / rel).write_text(rel)
    os.mkfifo(tmp_path / "a" / "fifo")
    (tmp_path / "a" / "link").symlink_to(tmp_path / "top")
    real = agent._mounts()
    monkeypatch.setattr(agent, "_mounts", lambda: [*real, ("tmpfs", str(tmp_path / "mnt"),
                                                           "tmpfs")])
    found = sorted(os.path.relpath(p, tmp_path) for p in agent._files_on(str(tmp_path)))
    assert found == ["a/b/two", "a/one", "top"]


def test_unknown_disk_is_one_clear_line() -> None:
    out = _agent("map", "--disk", "serial:no-such-disk")
    assert out.returncode == 2
    assert out.stderr.startswith("pcteleport-agent: unknown-disk: unknown disk")
    assert len(out.stderr.strip().splitlines()) == 1


def test_serve_stdio_answers_and_keeps_serving_after_errors() -> None:
    requests = [
        {"id": 1, "method": "ping"},
        "this is not json",
        {"id": 2, "method": "no-such-method"},
        {"id": 3, "method": "map", "params": {}},
        {"id": 4, "method": "map", "params": {"disk": "serial:no-such-disk"}},
        {"id": 5, "method": "hello"},
        {"id": 6, "method": "disks"},
    ]
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in requests)
    out = _agent("serve", "--stdio", stdin=text)
    assert out.returncode == 0, out.stderr
    replies = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r.get("id") for r in replies] == [1, None, 2, 3, 4, 5, 6]
    assert replies[0]["result"] == {}
    codes = [r["error"]["code"] for r in replies[1:5]]
    assert codes == ["bad-request", "unknown-method", "bad-request", "unknown-disk"]
    assert replies[5]["result"]["agent"] == "pcteleport"
    assert isinstance(replies[6]["result"]["disks"], list)


def test_bad_requests_found_by_the_probe_get_an_error_and_the_agent_keeps_serving() -> None:
    """Issue 16: an interval of Infinity or 1e300 (select() overflowed) and a 100,000-deep
    request (RecursionError) made the agent exit, for every later caller."""
    deep = "[" * 100_000 + "]" * 100_000
    requests = [
        {"id": 1, "method": "watch", "params": {"interval": float("inf")}},
        {"id": 2, "method": "watch", "params": {"interval": 1e300}},
        {"id": 3, "method": "watch", "params": {"interval": "NaN"}},
        {"id": 4, "method": "watch", "params": {"interval": [1]}},
        deep,
        '{"id": 5, "method": "ping", "params": ' + deep + "}",
        {"id": 6, "method": "map", "params": ["disk"]},
        {"id": 7, "method": "ping"},
    ]
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in requests)
    out = _agent("serve", "--stdio", stdin=text)
    assert out.returncode == 0, out.stderr[-2000:]
    replies = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r.get("id") for r in replies] == [1, 2, 3, 4, None, None, 6, 7]
    assert all(r["error"]["code"] == "bad-request" for r in replies[:7]), replies
    assert "from 0.05 to 3600" in replies[0]["error"]["message"]
    assert replies[7]["result"] == {}


async def test_async_client_over_a_subprocess() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(AGENT), "serve", "--stdio",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    client = AsyncAgentClient(proc.stdout, proc.stdin, timeout=30)  # type: ignore[arg-type]
    try:
        comp = await client.composition()
        assert comp["total"] > 0
        await client.request("watch", interval=0.1)
        events = [await client.next_event() for _ in range(3)]
        assert all(e["event"] == "composition" for e in events)
        await client.request("unwatch")
        with pytest.raises(AgentRequestError) as err:
            await client.map("serial:no-such-disk")
        assert err.value.code == "unknown-disk"
    finally:
        proc.stdin.close()
        await proc.wait()


def test_map_forms_parse_with_the_codec() -> None:
    extents = [(0x5000, 0x20000, 4096), (0x1000, 0x10000, 8192), (0x3000, 0x12000, 4096),
               (0x6000, 0x21000, 4096)]
    merged = agent.coalesce(extents)
    assert merged == [(0x1000, 0x10000, 12288), (0x5000, 0x20000, 8192)]
    header = {"disk-serial": "data", "disk-dev": "254:16", "source": "module"}
    parsed = mapfile.parse_text(agent.map_text(header, merged))
    assert parsed.meta["disk-serial"] == "data" and parsed.meta["source"] == "module"
    assert parsed.extents == merged
    assert mapfile.parse_binary(agent.map_binary(merged)).extents == merged


def test_a_big_answer_to_a_slow_host_arrives_whole(monkeypatch) -> None:
    """The send timeout is for a host that took nothing, not for a long answer: a map of
    megabytes read slowly must not be cut (it was, at 5 s in all, for the tpcc VM's map)."""
    import os
    import threading
    import time

    monkeypatch.setattr(agent, "SEND_TIMEOUT_S", 0.3)
    r, w = os.pipe()
    os.set_blocking(w, False)
    server = agent.Server(r, w, reconnecting=True)
    got = bytearray()

    def slow_host() -> None:
        while not got.endswith(b"\n"):
            got.extend(os.read(r, 64 << 10))
            time.sleep(0.05)

    reader = threading.Thread(target=slow_host, daemon=True)
    reader.start()
    text = "x" * (1 << 20)  # ~16 reads of 64 KiB, 50 ms apart: well past 0.3 s in all
    server.send({"id": 1, "result": {"text": text}})
    reader.join(30)
    assert json.loads(got)["result"]["text"] == text
    os.close(r)
    os.close(w)


async def test_an_answer_line_cut_short_is_named_not_a_json_error() -> None:
    """asyncssh hands back a line longer than its channel window cut short (it failed tpcc's
    multi-MB map on QEMU 10 as "Unterminated string"): the client says what happened."""
    from pcteleport.errors import PcteleportError

    reader = asyncio.StreamReader()
    reader.feed_data(b'{"id": 1, "result": {"text": "0x1000 0x2000 4096\\n0x20')
    reader.feed_eof()

    class Sink:
        def write(self, data: bytes) -> None:
            pass

        async def drain(self) -> None:
            pass

    client = AsyncAgentClient(reader, Sink(), timeout=5)  # type: ignore[arg-type]
    try:
        await client.request("map")
    except PcteleportError as exc:
        assert "answer to map arrived cut short after" in str(exc)
    else:
        raise AssertionError("a cut line was taken for an answer")
