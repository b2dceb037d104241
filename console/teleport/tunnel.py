"""An encrypted byte tunnel over the WAN, for teleport's disk copy (issue 16).

teleport cannot ask libvirt for TLS: VIR_MIGRATE_TLS would encrypt the memory stream too, and
the send relay must read that stream to teleport pages. Its NBD disk copy goes through this
tunnel instead. libvirt's NBD server at the destination listens on a unix socket (migrate3's
`disks_uri=unix://PATH`); `relay tunnel-out` there forwards to it what reaches its WAN port.
`relay tunnel-in` at the source listens on the same PATH, where the source QEMU's NBD client
connects, and carries each connection over the WAN in the relays' frames (wan.py: AES-256-GCM,
or authenticated only with `--insecure`).

Every local connection gets a WAN connection and keys of its own: it opens with its number n
(8 bytes), and its frames are sealed under HMAC-SHA256(secret, "nbd n"), one key per direction
derived from that, so no (key, nonce) pair repeats across connections. The destination accepts
each number once, and touches its socket only after the first frame (HELLO) opened: a peer
without the secret, or one that says nothing, is dropped and never holds up the others.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import hashlib
import hmac
import os
import pwd
import signal
import socket
import struct
import threading
from collections.abc import Callable

from pcteleport.errors import PcteleportError
from pcteleport.teleport import events, wan
from pcteleport.teleport.relay import Emitter, cpu_seconds, parse_hostport, read_secret

CONN = struct.Struct(">Q")
CHUNK = 256 << 10
HANDSHAKE_S = 30.0  # a WAN peer that has not opened its first frame by then is dropped
HELLO = b"pcteleport nbd tunnel"


class TunnelError(PcteleportError):
    pass


def conn_secret(secret: bytes, n: int) -> bytes:
    return hmac.new(secret, f"nbd {n}".encode(), hashlib.sha256).digest()


def _close(*socks: socket.socket) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.close()


def _to_frames(plain: socket.socket, writer: wan.FrameWriter) -> None:
    """Bytes from `plain` as DATA frames; END when it closes its side."""
    with contextlib.suppress(OSError):
        while chunk := plain.recv(CHUNK):
            writer.send(wan.DATA, chunk)
        writer.send(wan.END)


def _from_frames(reader: wan.FrameReader, plain: socket.socket) -> None:
    """DATA frames' payloads to `plain`, until END (or the WAN side closes)."""
    with contextlib.suppress(OSError, wan.WanError):
        while (frame := reader.next()) is not None and frame.type == wan.DATA:
            plain.sendall(frame.payload)
    with contextlib.suppress(OSError):
        plain.shutdown(socket.SHUT_WR)


def _splice(plain: socket.socket, wire: socket.socket, writer: wan.FrameWriter,
            reader: wan.FrameReader) -> None:
    """Both directions until both ended; a failed frame ends the connection (both sockets
    close, so the other direction stops too)."""
    out = threading.Thread(target=_to_frames, args=(plain, writer), daemon=True)
    out.start()
    _from_frames(reader, plain)
    out.join()
    _close(plain, wire)


def _serve(listener: socket.socket, handle: Callable[[socket.socket, int], None]) -> None:
    n = 0
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn, n), daemon=True).start()
        n += 1


class TunnelIn:
    """Source end: local connections on a unix socket -> the WAN."""

    def __init__(self, path: str, to: tuple[str, int], secret: bytes, encrypt: bool = True,
                 emit: Callable[[events.RelayEvent], None] | None = None,
                 owner: tuple[int, int] | None = None) -> None:
        self.path, self.to, self.secret, self.encrypt = path, to, secret, encrypt
        self.emit = emit or (lambda ev: None)
        self.owner = owner  # the source QEMU's user: libvirt runs it as libvirt-qemu, not root

    def run(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self.path)
            os.chmod(self.path, 0o600)  # only the source QEMU's user may connect
            if self.owner is not None:
                os.chown(self.path, *self.owner)
            listener.listen(16)
            self.emit(events.Listening(address=f"unix:{self.path}", pid=os.getpid(),
                                       cpu_s=cpu_seconds()))
            _serve(listener, self._handle)
        finally:
            _close(listener)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def _handle(self, plain: socket.socket, n: int) -> None:
        try:
            wire = socket.create_connection(self.to, timeout=HANDSHAKE_S)
        except OSError:
            _close(plain)  # the NBD client sees its connection end and says so to libvirt
            return
        wire.settimeout(None)
        wire.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = conn_secret(self.secret, n)
        writer = wan.FrameWriter(wire.sendall, key, wan.FORWARD, self.encrypt)
        reader = wan.FrameReader(wan.socket_read_exact(wire), key, wan.BACK, self.encrypt)
        try:
            wire.sendall(CONN.pack(n))
            writer.send(wan.HELLO, HELLO)
        except OSError:
            _close(plain, wire)
            return
        _splice(plain, wire, writer, reader)


class TunnelOut:
    """Destination end: the WAN -> the local unix socket (libvirt's NBD server)."""

    def __init__(self, listen: tuple[str, int], path: str, secret: bytes,
                 encrypt: bool = True,
                 emit: Callable[[events.RelayEvent], None] | None = None) -> None:
        self.listen, self.path, self.secret, self.encrypt = listen, path, secret, encrypt
        self.emit = emit or (lambda ev: None)
        self._used: set[int] = set()
        self._lock = threading.Lock()

    def run(self) -> None:
        listener = socket.create_server(self.listen, backlog=16)
        try:
            host, port = listener.getsockname()[:2]
            self.emit(events.Listening(address=f"{host}:{port}", pid=os.getpid(),
                                       cpu_s=cpu_seconds()))
            _serve(listener, self._handle)
        finally:
            _close(listener)

    def _handle(self, wire: socket.socket, _n: int) -> None:
        wire.settimeout(HANDSHAKE_S)
        try:
            head = wan.socket_read_exact(wire)(CONN.size)
            if len(head) < CONN.size:
                raise TunnelError("no connection number")
            (n,) = CONN.unpack(head)
            key = conn_secret(self.secret, n)
            reader = wan.FrameReader(wan.socket_read_exact(wire), key, wan.FORWARD,
                                     self.encrypt)
            first = reader.next()
            if first is None or first.type != wan.HELLO or first.payload != HELLO:
                raise TunnelError("no hello")
            with self._lock:
                if n in self._used:
                    raise TunnelError(f"connection {n} replayed")
                self._used.add(n)
            plain = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            plain.connect(self.path)
        except (OSError, PcteleportError):
            _close(wire)  # a wrong peer, a replay, or no NBD server: this connection only
            return
        wire.settimeout(None)
        wire.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        writer = wan.FrameWriter(wire.sendall, key, wan.BACK, self.encrypt)
        _splice(plain, wire, writer, reader)


def run_until_stopped(tunnel: TunnelIn | TunnelOut) -> int:
    """Serve until SIGTERM or SIGINT (the migration's end); the unix socket is removed."""

    def stop(_sig: int, _frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    tunnel.run()
    return 0


def _unix_path(text: str) -> str:
    if not text.startswith("unix:/"):
        raise TunnelError(f"'{text}' is not unix:/PATH")
    return text[len("unix:"):]


def parse_owner(text: str | None) -> tuple[int, int] | None:
    """`UID:GID` as libvirt's DAC label has it (`+64055:+64055`), or user and group names
    (`libvirt-qemu:kvm`), resolved on this host."""
    if not text:
        return None
    user, sep, group = text.partition(":")
    if not sep or not user or not group:
        raise TunnelError(f"owner '{text}' is not USER:GROUP")

    def resolve(name: str, lookup: Callable[[str], int], what: str) -> int:
        name = name.removeprefix("+")
        if name.isdigit():
            return int(name)
        try:
            return lookup(name)
        except KeyError:
            raise TunnelError(f"no {what} '{name}' on this host (owner '{text}')") from None

    return (resolve(user, lambda n: pwd.getpwnam(n).pw_uid, "user"),
            resolve(group, lambda n: grp.getgrnam(n).gr_gid, "group"))


def main(args: argparse.Namespace) -> int:
    """`relay tunnel-in` (source) or `relay tunnel-out` (destination)."""
    secret = read_secret(args.secret_file)
    if secret is None:
        raise TunnelError("the tunnel needs the migration's secret (--secret-file)")
    emit = Emitter(args.relay_command)
    if args.relay_command == "tunnel-in":
        return run_until_stopped(TunnelIn(_unix_path(args.listen), parse_hostport(args.to),
                                          secret, not args.insecure, emit,
                                          parse_owner(getattr(args, "owner", None))))
    return run_until_stopped(TunnelOut(parse_hostport(args.listen), _unix_path(args.to),
                                       secret, not args.insecure, emit))
