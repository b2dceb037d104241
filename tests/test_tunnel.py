"""teleport's disk copy tunnel (console/teleport/tunnel.py): bytes both ways between a local unix
socket at the source and one at the destination, over a recording proxy standing in for the WAN
— encrypted unless --insecure; a peer without the secret, a replayed connection or one that
says nothing is dropped without holding up the real one."""

from __future__ import annotations

import contextlib
import os
import socket
import threading

import pytest

from pcteleport.teleport import events, tunnel, wan
from tests.test_relay import free_port
from tests.test_wan_encryption import RecordingWan

SECRET = os.urandom(32)
MARKER = b"disk-block-of-customer-4111-1111"


class EchoServer(threading.Thread):
    """Stands in for libvirt's NBD server: echoes every connection back, and counts them."""

    def __init__(self, path: str) -> None:
        super().__init__(daemon=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.connections = 0

    def run(self) -> None:
        while True:
            conn, _ = self.sock.accept()
            self.connections += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)


def start(obj: tunnel.TunnelIn | tunnel.TunnelOut) -> None:
    """Run it in a thread; return once it listens (its Listening event, which names the
    process to stop and the CPU it had used by then: the start-up a run does not count)."""
    listening = threading.Event()
    seen: list[events.RelayEvent] = []
    obj.emit = lambda ev: (seen.append(ev), listening.set())
    threading.Thread(target=obj.run, daemon=True).start()
    assert listening.wait(60)
    ev = seen[0]
    assert isinstance(ev, events.Listening) and ev.pid == os.getpid() and ev.cpu_s > 0


def roundtrip(path: str, payload: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(30)
        c.connect(path)
        c.sendall(payload)
        c.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := c.recv(65536):
            out += chunk
    return out


def wait_for(path: str) -> None:
    for _ in range(300):
        if os.path.exists(path):
            return
        threading.Event().wait(0.01)
    raise AssertionError(f"{path} never appeared")


@pytest.mark.parametrize("insecure", [False, True])
def test_bytes_cross_both_ways_and_the_wan_sees_them_only_when_insecure(tmp_path, insecure):
    nbd, local = str(tmp_path / "nbd.sock"), str(tmp_path / "local.sock")
    server = EchoServer(nbd)
    server.start()
    port = free_port()
    start(tunnel.TunnelOut(("127.0.0.1", port), nbd, SECRET, encrypt=not insecure))
    proxy = RecordingWan(port)
    proxy.start()
    start(tunnel.TunnelIn(local, ("127.0.0.1", proxy.port), SECRET, encrypt=not insecure))
    wait_for(local)
    payload = (MARKER + os.urandom(4096 - len(MARKER))) * 64
    assert roundtrip(local, payload) == payload
    proxy.join(30)
    assert len(proxy.seen) > len(payload)  # it did cross the proxy, both ways
    assert (MARKER in proxy.seen) is insecure
    assert server.connections == 1


def test_each_connection_has_its_own_keys_and_a_wrong_peer_is_dropped(tmp_path):
    nbd, local = str(tmp_path / "nbd.sock"), str(tmp_path / "local.sock")
    server = EchoServer(nbd)
    server.start()
    port = free_port()
    start(tunnel.TunnelOut(("127.0.0.1", port), nbd, SECRET))
    # a squatter that says nothing, and one with the wrong secret: neither reaches the server
    idle = socket.create_connection(("127.0.0.1", port))
    wrong = socket.create_connection(("127.0.0.1", port))
    wrong.sendall(tunnel.CONN.pack(0))
    wan.FrameWriter(wrong.sendall, tunnel.conn_secret(os.urandom(32), 0)).send(
        wan.HELLO, tunnel.HELLO)
    assert wrong.recv(10) == b""  # dropped
    start(tunnel.TunnelIn(local, ("127.0.0.1", port), SECRET))
    wait_for(local)
    for _ in range(3):  # connections 0, 1, 2: each its own keys
        assert len(roundtrip(local, b"x" * 1000)) == 1000
    assert server.connections == 3
    # connection 0 again (a replay of its opening): refused
    again = socket.create_connection(("127.0.0.1", port))
    again.sendall(tunnel.CONN.pack(0))
    wan.FrameWriter(again.sendall, tunnel.conn_secret(SECRET, 0)).send(wan.HELLO, tunnel.HELLO)
    assert again.recv(10) == b""
    assert server.connections == 3
    for s in (idle, wrong, again):
        with contextlib.suppress(OSError):
            s.close()
    assert tunnel.conn_secret(SECRET, 0) != tunnel.conn_secret(SECRET, 1)


def test_the_cli_ends_take_the_secret_on_stdin_and_stop_on_sigterm(tmp_path):
    """As the sites start them over SSH (sites/libvirt/relays.py TunnelPair)."""
    import json
    import signal
    import subprocess
    import sys
    from pathlib import Path

    nbd, local = str(tmp_path / "nbd.sock"), str(tmp_path / "local.sock")
    EchoServer(nbd).start()
    port = free_port()
    secret = os.urandom(24).hex() + "\n"
    root = Path(__file__).resolve().parent.parent

    def end(*args: str) -> subprocess.Popen[str]:
        p = subprocess.Popen([sys.executable, "-m", "pcteleport.cli", "relay", *args,
                              "--secret-file", "-"], cwd=root, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write(secret)
        p.stdin.close()
        event = json.loads(p.stdout.readline())  # blocks until it listens
        assert event["event"] == "listening" and event["pid"] == p.pid
        return p

    out = end("tunnel-out", "--listen", f"127.0.0.1:{port}", "--to", f"unix:{nbd}")
    tin = end("tunnel-in", "--listen", f"unix:{local}", "--to", f"127.0.0.1:{port}")
    try:
        assert roundtrip(local, MARKER * 100) == MARKER * 100
    finally:
        for p in (tin, out):
            p.send_signal(signal.SIGTERM)
            assert p.wait(60) == 0
    assert not os.path.exists(local)  # tunnel-in removed its socket


def test_a_relay_end_is_stopped_even_if_it_ignores_term(tmp_path):
    """stop_ends' script: TERM, then KILL if the process is still there after 3 s."""
    import signal
    import subprocess
    import sys
    import time

    from pcteleport.sites.libvirt.relays import stop_script

    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time\n"
                                 "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                                 "print('up', flush=True)\ntime.sleep(60)"],
                                stdout=subprocess.PIPE, text=True)
    assert stubborn.stdout.readline().strip() == "up"
    t0 = time.monotonic()
    subprocess.run(["sh", "-c", stop_script(stubborn.pid)], check=True, timeout=15)
    assert stubborn.wait(5) == -signal.SIGKILL and time.monotonic() - t0 < 10
    gone = subprocess.run(["sh", "-c", stop_script(stubborn.pid)], timeout=15)
    assert gone.returncode == 0  # a process already gone: nothing to do


def test_owner_labels_as_libvirt_writes_them() -> None:
    import grp
    import pwd

    assert tunnel.parse_owner(None) is None
    assert tunnel.parse_owner("+64055:+64055") == (64055, 64055)
    assert tunnel.parse_owner("0:0") == (0, 0)
    root_group = grp.getgrgid(0).gr_name
    assert tunnel.parse_owner(f"{pwd.getpwuid(0).pw_name}:{root_group}") == (0, 0)
    with pytest.raises(tunnel.TunnelError, match="no user 'no-such-user' on this host"):
        tunnel.parse_owner("no-such-user:0")
    with pytest.raises(tunnel.TunnelError, match="is not USER:GROUP"):
        tunnel.parse_owner("64055")


def test_the_dac_label_of_a_running_domain() -> None:
    from pcteleport.sites.libvirt.site_runtime import qemu_dac_label

    debian = ("<domain type='kvm' id='3'><name>web</name>"
              "<seclabel type='dynamic' model='apparmor' relabel='yes'>"
              "<label>libvirt-0d5b</label></seclabel>"
              "<seclabel type='dynamic' model='dac' relabel='yes'>"
              "<label>+64055:+64055</label><imagelabel>+64055:+64055</imagelabel></seclabel>"
              "</domain>")
    assert qemu_dac_label(debian) == "+64055:+64055"
    assert qemu_dac_label("<domain type='qemu'><name>lab</name></domain>") is None
    assert qemu_dac_label("<domain><seclabel type='none' model='dac' relabel='no'/></domain>") \
        is None


def _connects_as(uid: int, path: str) -> bool:
    """Whether a process running as `uid` may connect to the unix socket `path`."""
    pid = os.fork()
    if pid == 0:  # the child: drop to uid, try, say by exit status
        code = 1
        try:
            os.setgid(uid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
                c.connect(path)
            code = 0
        except OSError:
            code = 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


@pytest.mark.root
def test_the_source_socket_belongs_to_the_qemu_user_and_no_one_else(tmp_path) -> None:
    """libvirt runs QEMU as libvirt-qemu on Debian: the socket QEMU's NBD client connects to
    is that user's (mode 0600); another unprivileged user cannot connect."""
    import tempfile

    from tests.conftest import require

    require(os.geteuid() == 0, "changing a socket's owner needs root")
    here = tempfile.mkdtemp(prefix="pct-tunnel-", dir="/tmp")
    os.chmod(here, 0o755)  # others may search it: only the socket's mode decides
    path = os.path.join(here, "nbd.sock")
    try:
        start(tunnel.TunnelIn(path, ("127.0.0.1", free_port()), SECRET, owner=(65534, 65534)))
        st = os.stat(path)
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (65534, 65534, 0o600)
        assert _connects_as(65534, path)
        assert not _connects_as(65533, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.rmdir(here)
