"""The relays as processes, over real loopback TCP, with stand-ins for the two QEMUs.

The real QEMU end-to-end run lives in test_teleport_qemu.py; here the QEMU ends are plain
sockets, so the return path, the back channel and every failure can be provoked exactly.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pcteleport.teleport.mapfile import RestorableMap
from tests.streamgen import PAGE, build_stream

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Relay:
    """A `pcteleport relay` process whose JSON lines are collected as they come."""

    def __init__(self, *args: str, stdin: bool = False) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pcteleport.cli", "relay", *args, "--stats-interval", "0.2"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        )
        self.events: list[dict] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.append(json.loads(line))

    def wait_event(self, name: str, timeout: float = 20) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in self.events:
                if ev["event"] == name:
                    return ev
            if self.proc.poll() is not None and not self._thread.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"no '{name}' event; got {self.events}, stderr: {self.stderr()}")

    def finish(self, timeout: float = 30) -> int:
        rc = self.proc.wait(timeout)
        self._thread.join(5)
        return rc

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return ""
        assert self.proc.stderr is not None
        return self.proc.stderr.read()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class FakeDestQemu(threading.Thread):
    """Listens like `-incoming tcp:`, reads the stream, answers on the return path."""

    def __init__(self, port: int, reply: bytes = b"PONG-SHUT", stop_after: int | None = None):
        super().__init__(daemon=True)
        self.server = socket.create_server(("127.0.0.1", port))
        self.reply = reply
        self.stop_after = stop_after
        self.received = bytearray()

    def run(self) -> None:
        conn, _ = self.server.accept()
        self.server.close()
        with conn:
            conn.sendall(self.reply)
            while chunk := conn.recv(65536):
                self.received += chunk
                if self.stop_after is not None and len(self.received) >= self.stop_after:
                    return  # like QEMU stopping at its EOF marker


def source_qemu(port: int, stream: bytes, hold_open: float = 0.0) -> bytes:
    """Connects like `migrate tcp:`, sends the stream, returns what came back."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=20)
    back = bytearray()
    reader = threading.Thread(target=lambda: _drain(sock, back), daemon=True)
    reader.start()
    sock.sendall(stream)
    time.sleep(hold_open)
    sock.shutdown(socket.SHUT_WR)
    reader.join(20)
    sock.close()
    return bytes(back)


def _drain(sock: socket.socket, into: bytearray) -> None:
    try:
        while chunk := sock.recv(65536):
            into += chunk
    except OSError:
        pass


@pytest.fixture
def material(tmp_path):
    rng = random.Random(3)
    disk = tmp_path / "disk.raw"
    disk.write_bytes(rng.randbytes(128 * PAGE))
    data = disk.read_bytes()
    recs = [("pc.ram", i * PAGE, data[(10 + i) * PAGE:(11 + i) * PAGE]) for i in range(40)]
    recs += [("pc.ram", i * PAGE, rng.randbytes(PAGE)) for i in range(40, 60)]
    recs += [("pc.ram", i * PAGE, None) for i in range(60, 64)]
    stream = build_stream([recs[:30], recs[30:]])
    rmap = tmp_path / "map.txt"
    rmap.write_text(RestorableMap(extents=[(0, 10 * PAGE, 40 * PAGE)]).to_text())
    secret = tmp_path / "secret"
    secret.write_text(os.urandom(24).hex())
    return {"disk": disk, "stream": stream, "map": rmap, "secret": secret, "tmp": tmp_path}


def start_pair(m, replica: Path | None = None, secret_recv: Path | None = None,
               *recv_args: str):
    qemu_port, wan_port, src_port = free_port(), free_port(), free_port()
    dest = FakeDestQemu(qemu_port)
    dest.start()
    recv = Relay("recv", "--listen", f"127.0.0.1:{wan_port}", "--to", f"127.0.0.1:{qemu_port}",
                 "--disk", str(replica or m["disk"]),
                 "--secret-file", str(secret_recv or m["secret"]), *recv_args)
    recv.wait_event("listening")
    send = Relay("send", "--listen", f"127.0.0.1:{src_port}", "--to", f"127.0.0.1:{wan_port}",
                 "--map", str(m["map"]), "--disk", str(m["disk"]),
                 "--secret-file", str(m["secret"]))
    send.wait_event("listening")
    return send, recv, dest, src_port


def test_relays_carry_the_stream_and_the_return_path(material):
    send, recv, dest, port = start_pair(material)
    try:
        back = source_qemu(port, material["stream"])
        assert send.finish() == 0, send.stderr()
        assert recv.finish() == 0, recv.stderr()
        dest.join(10)
        assert bytes(dest.received) == material["stream"]
        assert back == b"PONG-SHUT"
        summary = send.wait_event("summary")
        assert summary["pages_teleported"] == 40
        assert summary["pages_sent"] == 20
        assert summary["pages_zero"] == 4
        assert summary["wan_bytes"] < len(material["stream"]) - 35 * PAGE
        assert recv.wait_event("summary")["pages_teleported"] == 40
        # each relay says what CPU it used (a Python process uses some before it listens)
        assert summary["cpu_s"] > 0 and recv.wait_event("summary")["cpu_s"] > 0
    finally:
        send.kill()
        recv.kill()


def test_secret_and_a_late_map_on_stdin(material):
    """What the migration service does: secret and map on stdin, the map only after the
    relay listens and QEMU has connected; QEMU's connection waits, nothing is lost."""
    m = material
    qemu_port, wan_port, src_port = free_port(), free_port(), free_port()
    dest = FakeDestQemu(qemu_port)
    dest.start()
    secret = m["secret"].read_text().strip() + "\n"
    recv = Relay("recv", "--listen", f"127.0.0.1:{wan_port}", "--to", f"127.0.0.1:{qemu_port}",
                 "--disk", str(m["disk"]), "--secret-file", "-", stdin=True)
    send = Relay("send", "--listen", f"127.0.0.1:{src_port}", "--to", f"127.0.0.1:{wan_port}",
                 "--map", "-", "--disk", str(m["disk"]), "--secret-file", "-", stdin=True)
    try:
        assert recv.proc.stdin is not None and send.proc.stdin is not None
        recv.proc.stdin.write(secret)
        recv.proc.stdin.close()
        send.proc.stdin.write(secret)
        send.proc.stdin.flush()
        recv.wait_event("listening")
        send.wait_event("listening")
        back: list[bytes] = []
        qemu = threading.Thread(target=lambda: back.append(source_qemu(src_port, m["stream"])))
        qemu.start()
        time.sleep(0.5)
        assert not any(e["event"] == "connected" for e in send.events)  # waits for its map
        send.proc.stdin.write(m["map"].read_text())
        send.proc.stdin.close()
        assert send.wait_event("map")["pages"] == 40
        qemu.join(20)
        assert send.finish() == 0, send.stderr()
        assert recv.finish() == 0, recv.stderr()
        dest.join(10)
        assert bytes(dest.received) == m["stream"]
        assert back == [b"PONG-SHUT"]
        assert send.wait_event("summary")["pages_teleported"] == 40
    finally:
        send.kill()
        recv.kill()


def test_map_refreshes_on_stdin_teleport_pages_cached_later(material):
    """What the migration service does since issue 14: maps framed on stdin, the first, then a
    refresh naming pages cached after it. QEMU's second pass re-sends those pages, and they are
    teleported; the relay exits once its stream is done and its stdin has ended."""
    from pcteleport.teleport.mapfile import frame_update

    m = material
    data = m["disk"].read_bytes()
    cached = [("pc.ram", i * PAGE, data[(10 + i) * PAGE:(11 + i) * PAGE]) for i in range(40)]
    stream = build_stream([cached, cached[20:]])  # pages 20-39 dirtied, sent again
    first = RestorableMap(extents=[(0, 10 * PAGE, 20 * PAGE)]).to_text().encode()
    later = RestorableMap(extents=[(20 * PAGE, 30 * PAGE, 20 * PAGE)]).to_binary()
    qemu_port, wan_port, src_port = free_port(), free_port(), free_port()
    dest = FakeDestQemu(qemu_port)
    dest.start()
    recv = Relay("recv", "--listen", f"127.0.0.1:{wan_port}", "--to", f"127.0.0.1:{qemu_port}",
                 "--disk", str(m["disk"]), "--secret-file", str(m["secret"]))
    send = Relay("send", "--listen", f"127.0.0.1:{src_port}", "--to", f"127.0.0.1:{wan_port}",
                 "--map", "-", "--map-updates", "--disk", str(m["disk"]),
                 "--secret-file", str(m["secret"]), stdin=True)
    try:
        assert send.proc.stdin is not None
        send.proc.stdin.write(frame_update(first).decode())
        send.proc.stdin.flush()
        recv.wait_event("listening")
        send.wait_event("listening")
        assert send.wait_event("map")["pages"] == 20
        sock = socket.create_connection(("127.0.0.1", src_port), timeout=20)
        split = len(stream) * 6 // 10  # inside the first pass: the second is the last third
        sock.sendall(stream[:split])
        send.proc.stdin.buffer.write(frame_update(later))  # type: ignore[attr-defined]
        send.proc.stdin.flush()
        deadline = time.monotonic() + 20
        while not any(e["event"] == "map" and e.get("refresh") == 1 for e in send.events):
            assert time.monotonic() < deadline, send.events
            time.sleep(0.02)
        time.sleep(0.3)  # the encoder merges it before its next page
        sock.sendall(stream[split:])
        sock.shutdown(socket.SHUT_WR)
        summary = send.wait_event("summary")
        assert send.proc.poll() is None  # waits for the end of its maps...
        send.proc.stdin.close()  # ...which the service sends when QEMU's transfer ends
        assert send.finish() == 0, send.stderr()
        sock.close()
        assert recv.finish() == 0, recv.stderr()
        dest.join(10)
        assert bytes(dest.received) == stream
        assert summary["pages_teleported_later"] >= 20  # the second pass, at least
        assert summary["pages_teleported"] == 20 + summary["pages_teleported_later"]
    finally:
        send.kill()
        recv.kill()


def test_diverged_replica_pages_come_over_the_back_channel(material):
    m = material
    replica = m["tmp"] / "replica.raw"
    data = bytearray(m["disk"].read_bytes())
    data[12 * PAGE + 100] ^= 0x55  # the block behind guest page 2
    replica.write_bytes(bytes(data))
    send, recv, dest, port = start_pair(m, replica, None, "--on-mismatch", "fetch")
    try:
        source_qemu(port, m["stream"])
        assert send.finish() == 0, send.stderr()
        assert recv.finish() == 0, recv.stderr()
        dest.join(10)
        assert bytes(dest.received) == m["stream"]
        assert recv.wait_event("summary")["pages_fetched"] == 1
    finally:
        send.kill()
        recv.kill()


def test_diverged_replica_fails_the_migration_by_default(material):
    m = material
    replica = m["tmp"] / "replica.raw"
    data = bytearray(m["disk"].read_bytes())
    data[12 * PAGE + 100] ^= 0x55
    replica.write_bytes(bytes(data))
    send, recv, dest, port = start_pair(m, replica=replica)
    try:
        source_qemu(port, m["stream"])
        assert recv.finish() != 0
        assert send.finish() != 0
        message = recv.wait_event("error")["message"]
        assert f"differs from the source at byte {12 * PAGE}" in message
        assert "re-sync it or migrate without teleport" in message
        assert "re-sync" in send.wait_event("error")["message"]
        dest.join(10)
        # QEMU never saw the page, nor anything after it.
        assert len(dest.received) < m["stream"].index(m["disk"].read_bytes()[12 * PAGE:13 * PAGE])
    finally:
        send.kill()
        recv.kill()


def test_wrong_secret_is_turned_away(material):
    m = material
    other = m["tmp"] / "other-secret"
    other.write_text("x" * 32)
    send, recv, dest, port = start_pair(m, secret_recv=other)
    try:
        threading.Thread(target=source_qemu, args=(port, m["stream"]), daemon=True).start()
        refused = recv.wait_event("refused")
        assert "authentication" in refused["reason"]
        assert send.finish() != 0
        assert "did not say hello" in send.wait_event("error")["message"]
        assert dest.received == bytearray()
    finally:
        send.kill()
        recv.kill()


def test_the_recv_relay_gives_up_on_a_wrong_secret_and_says_why(material):
    """Issue 16: with mismatched secrets the recv relay used to wait for ever."""
    m = material
    other = m["tmp"] / "other-secret"
    other.write_text("x" * 32)
    send, recv, _dest, port = start_pair(m, None, other, "--wait", "3")
    try:
        threading.Thread(target=source_qemu, args=(port, m["stream"]), daemon=True).start()
        assert recv.finish(timeout=30) != 0
        message = recv.wait_event("error")["message"]
        assert "no source relay authenticated within 3 s (1 refused" in message
        assert "same secret" in message
    finally:
        send.kill()
        recv.kill()


@pytest.mark.parametrize("squat", [b"", b"\x00" * 5, b"\xff" * 64])
def test_a_silent_client_on_the_wan_port_does_not_hold_up_the_migration(material, squat):
    """Issue 16: a client that connects to the recv relay's WAN port first and sends nothing,
    half a header or garbage must not stall the real source relay behind it: the migration
    completes while the squatter is still connected and has not yet been turned away."""
    m = material
    send, recv, dest, port = start_pair(m)
    wan_port = int(recv.wait_event("listening")["address"].rsplit(":", 1)[1])
    squatter = socket.create_connection(("127.0.0.1", wan_port))
    try:
        squatter.sendall(squat)
        time.sleep(0.3)  # it is connected before the real relay
        back = source_qemu(port, m["stream"])
        assert send.finish() == 0, send.stderr()
        assert recv.finish() == 0, recv.stderr()
        dest.join(10)
        assert bytes(dest.received) == m["stream"] and back == b"PONG-SHUT"
        turned_away = [e for e in recv.events if e["event"] == "refused"]
        assert not turned_away or squat, turned_away  # silence is waited out, not trusted
    finally:
        squatter.close()
        send.kill()
        recv.kill()


def test_source_vanishing_mid_stream_fails_both_ends_clearly(material):
    m = material
    send, recv, dest, port = start_pair(m)
    try:
        half = m["stream"][: len(m["stream"]) // 2]
        source_qemu(port, half)
        assert send.finish() != 0
        assert re.search(r"(truncated|ended) at byte \d+", send.wait_event("error")["message"])
        assert recv.finish() != 0
        assert "source relay" in recv.wait_event("error")["message"]
        dest.join(10)
        assert len(dest.received) < len(m["stream"])
    finally:
        send.kill()
        recv.kill()


def test_killed_destination_relay_fails_the_source_end(material):
    m = material
    send, recv, _dest, port = start_pair(m)
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        sock.sendall(m["stream"][:1000])
        send.wait_event("connected")
        recv.wait_event("connected")
        recv.proc.kill()
        time.sleep(0.3)
        with pytest.raises(OSError):
            for _ in range(200):
                sock.sendall(m["stream"])
                time.sleep(0.01)
            raise OSError("the source relay kept accepting data after its peer died")
        assert send.finish() != 0
        assert send.wait_event("error")["message"]
        sock.close()
    finally:
        send.kill()
        recv.kill()


def test_destination_qemu_stopping_at_eof_marker_is_not_an_error(material):
    m = material
    qemu_port, wan_port, src_port = free_port(), free_port(), free_port()
    desc_len = len(b'{"page_size":4096,"devices":[]}') + 5
    dest = FakeDestQemu(qemu_port, stop_after=len(m["stream"]) - desc_len)
    dest.start()
    recv = Relay("recv", "--listen", f"127.0.0.1:{wan_port}", "--to", f"127.0.0.1:{qemu_port}",
                 "--disk", str(m["disk"]))
    send = Relay("send", "--listen", f"127.0.0.1:{src_port}", "--to", f"127.0.0.1:{wan_port}")
    try:
        send.wait_event("listening")
        source_qemu(src_port, m["stream"])
        assert recv.finish() == 0, recv.stderr()
        assert send.finish() == 0, send.stderr()
    finally:
        send.kill()
        recv.kill()


def test_bad_arguments_give_one_clear_line(material, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pcteleport.cli", "relay", "send", "--listen", "nonsense",
         "--to", "127.0.0.1:1"], cwd=ROOT, capture_output=True, text=True,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == "pcteleport: 'nonsense' is not HOST:PORT"
    out = subprocess.run(
        [sys.executable, "-m", "pcteleport.cli", "relay", "send", "--listen", "127.0.0.1:0",
         "--to", "127.0.0.1:1", "--map", str(material["map"])],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert out.returncode == 2
    assert "--map needs --disk" in out.stderr
