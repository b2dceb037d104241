"""The two relay ends of a teleport migration, one process each.

    source QEMU --tcp--> relay send (encoder) ==WAN==> relay recv (decoder) --tcp--> dest QEMU

QEMU's migration channel is two-way: the destination answers on a return path (PONG, SHUT),
so each relay also carries RETURN frames backwards. The same backward direction carries
FETCH requests for pages whose replica block did not verify; the source answers with PAGE
frames from the pages it still keeps.

Sockets are blocking and each direction has its own thread: a full WAN blocks `sendall`,
which stops the encoder from reading QEMU, so QEMU's own rate and downtime estimates see the
effective WAN rate (the buffers between are the kernel's socket buffers, kept small: see
QEMU_RCVBUF).

Each relay prints its events (events.py) as JSON lines on stdout: `listening`, `connected`,
`stats` once per interval, and finally `summary` or `error`. Exit status 0 only when the
stream went through whole.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import queue
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pcteleport.errors import PcteleportError
from pcteleport.teleport import events, heap, mapfile, wan
from pcteleport.teleport.counters import CodecCounters
from pcteleport.teleport.decoder import DecodeError, Decoder
from pcteleport.teleport.disk import DiskImage, DiskSet, open_disks
from pcteleport.teleport.encoder import Encoder
from pcteleport.teleport.stream import SocketReader

ID = struct.Struct(">Q")
# What may wait between QEMU and the WAN. QEMU sizes its last round by the rate it writes at;
# bytes parked in autotuned buffers (measured: 3.4 MB in the receive buffer facing QEMU, 3.5 MB
# unsent on the WAN socket) make that rate look higher than the WAN's and then drain while the
# guest is paused, lengthening the downtime.
QEMU_RCVBUF = 256 << 10
WAN_NOTSENT_LOWAT = 128 << 10  # unsent bytes only: in-flight data still fills the WAN's BDP
CONNECT_TIMEOUT = 20.0
HELLO_TIMEOUT = 10.0  # a WAN client has this long to authenticate
MAX_REFUSED = 16  # connections turned away before the recv relay gives up
WAIT_FOR_SOURCE = 600.0  # for the source relay's connection (the map may take minutes)
DRAIN_TIMEOUT = 30.0  # after the stream, how long to wait for the return path to close
PEER_SAYS_WHY_S = 2.0  # how long a write error waits for the peer's reason



class RelayError(PcteleportError):
    pass


def cpu_seconds() -> float:
    """This process's CPU time so far, every thread's, user and system: what a relay costs
    its host (the codec, the AEAD, the sockets), whatever else the host runs."""
    return round(time.process_time(), 3)


def parse_hostport(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise RelayError(f"'{text}' is not HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def read_secret(path: str | None) -> bytes | None:
    """The secret from a file, or from the first line of stdin when PATH is '-'."""
    if not path:
        return None
    if path == "-":
        # Over SSH, stdin keeps the secret off the command line and off the disk.
        secret = sys.stdin.buffer.readline().strip()
        path = "stdin"
    else:
        try:
            secret = Path(path).read_bytes().strip()
        except OSError as exc:
            raise RelayError(f"cannot read secret file {path}: {exc.strerror}") from None
    if len(secret) < 16:
        raise RelayError(f"secret in {path} is too short (need at least 16 bytes)")
    return secret


class Emitter:
    """Events (events.py) as JSON lines on stdout, stamped with role and time, one writer at a
    time."""

    def __init__(self, role: str, out: Any = None) -> None:
        self.role = role
        self.out = out or sys.stdout
        self._lock = threading.Lock()
        self.t0 = time.monotonic()

    def __call__(self, event: events.RelayEvent) -> None:
        stamped = dataclasses.replace(event, role=self.role,
                                      t=round(time.monotonic() - self.t0, 3))
        with self._lock:
            self.out.write(events.encode(stamped) + "\n")
            self.out.flush()


class StatsTicker(threading.Thread):
    """Prints counters and rates every `interval` seconds until stopped."""

    def __init__(self, emit: Emitter, counters: Callable[[], CodecCounters], interval: float):
        super().__init__(daemon=True)
        self.emit, self.counters, self.interval = emit, counters, interval
        self.stopped = threading.Event()

    def run(self) -> None:
        last = self.counters().as_dict()
        last_t = time.monotonic()
        while not self.stopped.wait(self.interval):
            now = time.monotonic()
            cur = self.counters().as_dict()
            dt = max(now - last_t, 1e-6)
            self.emit(events.Stats(
                counters=CodecCounters(**cur),
                guest_rate_bps=round((cur["guest_bytes"] - last["guest_bytes"]) * 8 / dt),
                wan_rate_bps=round((cur["wan_bytes"] - last["wan_bytes"]) * 8 / dt),
            ))
            last, last_t = cur, now


def _listen(addr: tuple[str, int], rcvbuf: int = 0) -> socket.socket:
    family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if rcvbuf:  # set before listen(): accepted sockets inherit it (and no autotuning)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    try:
        srv.bind(addr)
    except OSError as exc:
        srv.close()
        raise RelayError(f"cannot listen on {addr[0]}:{addr[1]}: {exc.strerror}") from None
    srv.listen(4)
    return srv


def _connect(addr: tuple[str, int], timeout: float = CONNECT_TIMEOUT) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock = socket.create_connection(addr, timeout=5)
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError as exc:
            if time.monotonic() > deadline:
                raise RelayError(
                    f"cannot reach {addr[0]}:{addr[1]}: {exc.strerror or exc}"
                ) from None
            time.sleep(0.2)


def _stop(sock: socket.socket) -> None:
    """Break a connection another thread is using (it sees end of stream, not a bad fd)."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _close(*socks: socket.socket | None) -> None:
    for s in socks:
        if s is None:
            continue
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()


# -- source end ---------------------------------------------------------------------------


class SendRelay:
    def __init__(
        self,
        listen: tuple[str, int],
        to: tuple[str, int],
        rmap: mapfile.RestorableMap | None,
        disk: DiskImage | DiskSet | None,
        secret: bytes | None,
        emit: Emitter,
        stats_interval: float = 1.0,
        load_map: Callable[[], mapfile.RestorableMap] | None = None,
        more_maps: Iterator[mapfile.RestorableMap] | None = None,
        insecure: bool = False,
    ) -> None:
        self.insecure = insecure  # frames authenticated but in clear (for comparison only)
        self.listen_addr, self.to = listen, to
        self.rmap, self.disk, self.secret = rmap, disk, secret
        self.load_map = load_map
        self.more_maps = more_maps  # refreshes of the map, merged while the stream runs
        self.emit = emit
        self.stats_interval = stats_interval
        self.server = _listen(listen, rcvbuf=QEMU_RCVBUF)
        self.port = self.server.getsockname()[1]
        self.back_error: str | None = None

    def run(self) -> CodecCounters:
        emit = self.emit
        emit(events.Listening(address=f"{self.listen_addr[0]}:{self.port}", pid=os.getpid(),
                             cpu_s=cpu_seconds()))
        if self.load_map is not None:
            # The map may come after we listen (the console takes it from the guest while
            # libvirt prepares the destination); QEMU waits in the listen backlog meanwhile.
            t = time.monotonic()
            self.rmap = self.load_map()
            emit(events.MapLoaded(pages=self.rmap.pages, seconds=round(time.monotonic() - t, 3)))
        qemu, peer = self.server.accept()
        self.server.close()
        wan_sock: socket.socket | None = None
        try:
            emit(events.Connected(side="qemu", peer=f"{peer[0]}:{peer[1]}"))
            wan_sock = _connect(self.to)
            with contextlib.suppress(OSError, AttributeError):  # Linux >= 3.12
                wan_sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT,
                                    WAN_NOTSENT_LOWAT)
            emit(events.Connected(side="wan", peer=f"{self.to[0]}:{self.to[1]}"))
            writer = wan.FrameWriter(wan_sock.sendall, self.secret, wan.FORWARD,
                                     encrypt=not self.insecure)
            encoder = Encoder(writer, self.rmap, self.disk)
            encoder.hello()
            if self.more_maps is not None:
                # Not a daemon: one blocked in stdin's read at exit kills the interpreter
                # ("could not acquire lock for <stdin>"). It ends when stdin does, which the
                # console closes when QEMU's transfer ends.
                threading.Thread(target=self._refreshes, args=(encoder,),
                                 name="map-refreshes").start()
            back = threading.Thread(
                target=self._back_channel, args=(wan_sock, qemu, writer, encoder), daemon=True
            )
            back.start()
            ticker = StatsTicker(emit, lambda: encoder.counters, self.stats_interval)
            ticker.start()
            try:
                counters = encoder.run(SocketReader(qemu))
            except (OSError, PcteleportError) as exc:
                if isinstance(exc, OSError) and not self.back_error:
                    # a peer that closed (a wrong secret: it never said hello) breaks our
                    # writes before the back channel has read why: let it say so first
                    back.join(PEER_SAYS_WHY_S)
                if self.back_error:  # the peer's failure is why QEMU's stream was cut
                    raise RelayError(self.back_error) from None
                self._send_error(writer, str(exc))
                if isinstance(exc, OSError):
                    raise RelayError(f"lost the source QEMU or the WAN: {exc}") from None
                raise
            finally:
                ticker.stopped.set()
            # QEMU may still wait for the destination's return path to close (SHUT).
            back.join(DRAIN_TIMEOUT)
            if self.back_error:
                raise RelayError(self.back_error)
            counters.wan_bytes = writer.bytes_out
            if self.disk is not None:
                n = len(self.disk.sizes)
                emit(events.DiskPages(
                    teleported=",".join(str(encoder.teleported_by_disk.get(i, 0))
                                        for i in range(n)),
                    refused=",".join(str(encoder.refused_by_disk.get(i, 0)) for i in range(n))))
            emit(events.Summary(counters=counters, cpu_s=cpu_seconds()))
            return counters
        finally:
            _close(qemu, wan_sock)

    def _refreshes(self, encoder: Encoder) -> None:
        """Refreshed maps as they come; a bad one ends the refreshes, not the migration (the
        pages it would have named are simply sent)."""
        assert self.more_maps is not None
        n = 0
        t = time.monotonic()
        try:
            for rmap in self.more_maps:
                n += 1
                encoder.add_map(rmap)
                self.emit(events.MapLoaded(pages=rmap.pages, refresh=n,
                                           seconds=round(time.monotonic() - t, 3)))
                t = time.monotonic()
        except (mapfile.MapError, ValueError, OSError) as exc:
            self.emit(events.Notice(message=f"map refreshes stopped: {exc}"))

    @staticmethod
    def _send_error(writer: wan.FrameWriter, message: str) -> None:
        with contextlib.suppress(OSError):
            writer.send(wan.ERROR, message.encode())

    def _back_channel(
        self, wan_sock: socket.socket, qemu: socket.socket, writer: wan.FrameWriter, enc: Encoder
    ) -> None:
        reader = wan.FrameReader(wan.socket_read_exact(wan_sock), self.secret, wan.BACK,
                                 encrypt=not self.insecure)
        try:
            first = reader.next()
            if first is None or first.type != wan.HELLO or first.json().get("role") != "decoder":
                raise RelayError("the destination relay did not say hello")
            if not first.json().get("fetch"):
                enc.stop_keeping()  # the peer fails on a mismatch: no page will be asked for
            while (frame := reader.next()) is not None:
                if frame.type == wan.RETURN:
                    qemu.sendall(frame.payload)
                elif frame.type == wan.FETCH:
                    self._answer_fetch(frame.payload, writer, enc)
                elif frame.type == wan.ERROR:
                    msg = frame.payload.decode(errors="replace")
                    self.back_error = f"destination relay: {msg}"
                    _stop(qemu)  # QEMU sees the stream break: the source keeps running
                    return
                else:
                    raise RelayError(f"unexpected {wan.NAMES.get(frame.type)} frame from peer")
        except (OSError, PcteleportError) as exc:
            self.back_error = f"back channel: {exc}"
            _stop(qemu)
            return
        # The destination closed the WAN: let QEMU see the return path close too.
        with contextlib.suppress(OSError):
            qemu.shutdown(socket.SHUT_WR)

    def _answer_fetch(self, payload: bytes, writer: wan.FrameWriter, enc: Encoder) -> None:
        for (ref_id,) in ID.iter_unpack(payload):
            page = enc.kept_page(ref_id)
            if page is None:
                self._send_error(writer, f"page {ref_id} asked for is no longer kept")
                continue
            writer.send(wan.PAGE, ID.pack(ref_id) + page)


# -- destination end ----------------------------------------------------------------------


class FrameSource:
    """Frames from the WAN with a queue in front, for frames read while awaiting PAGEs."""

    def __init__(self, reader: wan.FrameReader) -> None:
        self.reader = reader
        self.pending: deque[wan.Frame] = deque()

    def next(self) -> wan.Frame | None:
        if self.pending:
            return self.pending.popleft()
        return self.reader.next()


class RecvRelay:
    def __init__(
        self,
        listen: tuple[str, int],
        to: tuple[str, int],
        disk: DiskImage | DiskSet | None,
        secret: bytes | None,
        emit: Emitter,
        stats_interval: float = 1.0,
        fetch_on_mismatch: bool = False,
        wait_s: float = WAIT_FOR_SOURCE,
        insecure: bool = False,
    ) -> None:
        self.insecure = insecure
        self.listen_addr, self.to = listen, to
        self.disk, self.secret = disk, secret
        self.wait_s = wait_s
        self.fetch_on_mismatch = fetch_on_mismatch
        self.emit = emit
        self.stats_interval = stats_interval
        self.server = _listen(listen)
        self.port = self.server.getsockname()[1]

    def _accept_authentic(self) -> tuple[socket.socket, wan.FrameReader, dict]:
        """The first WAN connection whose HELLO authenticates; others are turned away.

        Each connection says hello in a thread of its own, within HELLO_TIMEOUT: a client that
        connects and sends nothing (or half a frame) cannot hold up the source relay behind it.
        """
        found: queue.Queue[tuple[socket.socket, wan.FrameReader, dict, str]] = queue.Queue()
        refused: list[str] = []

        def handshake(sock: socket.socket, peer: str) -> None:
            sock.settimeout(HELLO_TIMEOUT)
            reader = wan.FrameReader(wan.socket_read_exact(sock), self.secret, wan.FORWARD,
                                     encrypt=not self.insecure)
            try:
                hello = reader.next()
                if hello is None or hello.type != wan.HELLO:
                    raise RelayError("no hello")
                info = hello.json()
            except (PcteleportError, OSError) as exc:
                reason = "said nothing in time" if isinstance(exc, TimeoutError) else str(exc)
                self.emit(events.Refused(peer=peer, reason=reason))
                refused.append(peer)
                _close(sock)
                return
            found.put((sock, reader, info, peer))

        deadline = time.monotonic() + self.wait_s
        self.server.settimeout(0.2)
        while found.empty():
            if len(refused) >= MAX_REFUSED:
                raise RelayError("too many connections failed authentication; giving up")
            if time.monotonic() > deadline:
                raise RelayError(
                    f"no source relay authenticated within {self.wait_s:g} s"
                    + (f" ({len(refused)} refused: {', '.join(refused[:3])}): check that both "
                       "ends got the same secret" if refused else ""))
            try:
                sock, addr = self.server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=handshake, args=(sock, f"{addr[0]}:{addr[1]}"),
                             daemon=True).start()
        sock, reader, info, peer = found.get()
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.emit(events.Connected(side="wan", peer=peer))
        return sock, reader, info

    def run(self) -> CodecCounters:
        emit = self.emit
        emit(events.Listening(address=f"{self.listen_addr[0]}:{self.port}", pid=os.getpid(),
                             cpu_s=cpu_seconds()))
        wan_sock, reader, hello = self._accept_authentic()
        self.server.close()
        qemu: socket.socket | None = None
        writer = wan.FrameWriter(wan_sock.sendall, self.secret, wan.BACK,
                                 encrypt=not self.insecure)
        source = FrameSource(reader)
        # A diverged replica fails the migration by default: the VM must not go on running
        # on a disk that differs from its own. Fetching the page only repairs the cache.
        fetch = (lambda ids: self._fetch(ids, writer, source)) if self.fetch_on_mismatch \
            else None
        decoder = Decoder(self.disk, fetch=fetch)
        try:
            decoder.on_hello(hello)
            qemu = _connect(self.to)
            emit(events.Connected(side="qemu", peer=f"{self.to[0]}:{self.to[1]}"))
            writer.send_json(wan.HELLO, {"role": "decoder", "fetch": self.fetch_on_mismatch})
            back = threading.Thread(target=self._return_path, args=(qemu, writer), daemon=True)
            back.start()

            def live_counters() -> CodecCounters:
                decoder.counters.wan_bytes = reader.bytes_in
                return decoder.counters

            ticker = StatsTicker(emit, live_counters, self.stats_interval)
            ticker.start()
            try:
                self._pump(source, decoder, qemu)
            finally:
                ticker.stopped.set()
            with contextlib.suppress(OSError):
                qemu.shutdown(socket.SHUT_WR)
            back.join(DRAIN_TIMEOUT)
            counters = live_counters()
            emit(events.Summary(counters=counters, cpu_s=cpu_seconds()))
            return counters
        except (PcteleportError, OSError) as exc:
            with contextlib.suppress(OSError):
                writer.send(wan.ERROR, str(exc).encode())
            if isinstance(exc, OSError):
                raise RelayError(f"lost the destination QEMU or the WAN: {exc}") from None
            raise
        finally:
            _close(qemu, wan_sock)

    def _pump(self, source: FrameSource, decoder: Decoder, qemu: socket.socket) -> None:
        written = 0
        qemu_gone: OSError | None = None
        while (frame := source.next()) is not None:
            if frame.type == wan.DATA:
                data = b"".join(decoder.data(frame.payload))
                if qemu_gone is None:
                    try:
                        qemu.sendall(data)
                        written += len(data)
                    except OSError as exc:
                        qemu_gone = exc  # judged at END: QEMU may just have read all it needs
            elif frame.type == wan.END:
                info = frame.json()
                decoder.end(info)
                needed = decoder.counters.guest_bytes - int(info.get("optional_tail") or 0)
                if qemu_gone is not None and written < needed:
                    raise RelayError(
                        f"the destination QEMU closed the migration stream after {written} of "
                        f"{needed} bytes ({qemu_gone.strerror or qemu_gone}): see its log"
                    )
                return
            elif frame.type == wan.ERROR:
                raise RelayError(f"source relay: {frame.payload.decode(errors='replace')}")
            else:
                raise DecodeError(f"unexpected {wan.NAMES.get(frame.type)} frame from source")
        raise DecodeError("the WAN connection closed before the end of the stream")

    @staticmethod
    def _fetch(ids: list[int], writer: wan.FrameWriter, source: FrameSource) -> dict[int, bytes]:
        """Ask the source for pages and wait, queueing the DATA that arrives meanwhile."""
        writer.send(wan.FETCH, b"".join(ID.pack(i) for i in ids))
        wanted = set(ids)
        got: dict[int, bytes] = {}
        held: list[wan.Frame] = []
        while wanted:
            frame = source.reader.next()
            if frame is None:
                raise DecodeError("the WAN connection closed while fetching pages")
            if frame.type == wan.PAGE:
                (ref_id,) = ID.unpack_from(frame.payload)
                got[ref_id] = frame.payload[ID.size :]
                wanted.discard(ref_id)
            elif frame.type == wan.ERROR:
                raise DecodeError(f"source relay: {frame.payload.decode(errors='replace')}")
            else:
                held.append(frame)
        source.pending.extend(held)
        return got

    def _return_path(self, qemu: socket.socket, writer: wan.FrameWriter) -> None:
        try:
            while data := qemu.recv(65536):
                writer.send(wan.RETURN, data)
        except OSError:
            pass


# -- command-line entry points --------------------------------------------------------------


def main_send(args: argparse.Namespace) -> int:
    emit = Emitter("send")
    heap.keep_freed_memory()
    if args.map and not args.disk:
        raise RelayError("--map needs --disk (the source image the map refers to)")
    from_stdin = args.map == "-"
    rmap = mapfile.load(args.map) if args.map and not from_stdin else None
    disk = open_disks(args.disk)
    secret = read_secret(args.secret_file)  # before the map: both may come on stdin

    updates = mapfile.read_updates(sys.stdin.buffer) if args.map_updates else None
    if updates is not None and not from_stdin:
        raise RelayError("--map-updates reads the maps from stdin: give --map -")

    def map_from_stdin() -> mapfile.RestorableMap:
        if updates is None:
            return mapfile.parse(sys.stdin.buffer.read(), "the map on stdin")
        first = next(updates, None)
        if first is None:
            raise RelayError("stdin ended before the first map")
        return first

    relay = SendRelay(
        parse_hostport(args.listen), parse_hostport(args.to), rmap, disk,
        secret, emit, args.stats_interval, load_map=map_from_stdin if from_stdin else None,
        more_maps=updates, insecure=args.insecure,
    )
    return _run(relay, emit)


def main_recv(args: argparse.Namespace) -> int:
    emit = Emitter("recv")
    heap.keep_freed_memory()
    disk = open_disks(args.disk)
    relay = RecvRelay(
        parse_hostport(args.listen), parse_hostport(args.to), disk,
        read_secret(args.secret_file), emit, args.stats_interval,
        fetch_on_mismatch=args.on_mismatch == "fetch", wait_s=args.wait,
        insecure=args.insecure,
    )
    return _run(relay, emit)


def _run(relay: SendRelay | RecvRelay, emit: Emitter) -> int:
    """Run a relay; its failure is also the last JSON line, for whoever reads the stream."""
    try:
        relay.run()
    except PcteleportError as exc:
        emit(events.Failed(message=str(exc)))
        raise
    return 0
