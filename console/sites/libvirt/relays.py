"""Starting, watching and stopping the two relays of one teleport migration, over SSH.

`relay recv` at the destination listens on the destination's WAN address and forwards to the
destination QEMU's 127.0.0.1 port; `relay send` at the source listens on the source's
127.0.0.1 port, where the source QEMU connects, and forwards over the WAN. Both start at
once: the send relay connects over the WAN only when QEMU connects, after both listen.
Both get a fresh per-migration secret on stdin, so each accepts only this migration.
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from pcteleport.errors import PcteleportError
from pcteleport.sites.libvirt.site_runtime import SiteRuntime
from pcteleport.sites.remote import RemoteProcess
from pcteleport.teleport import events, mapfile

PORT_RANGE = (49200, 60999)


class RelayFailure(PcteleportError):
    pass


E = TypeVar("E", bound=events.RelayEvent)


@dataclass
class RelayEnd:
    site: SiteRuntime
    role: str
    proc: RemoteProcess | None = None
    events: list[events.RelayEvent] = field(default_factory=list)
    latest: events.Stats | events.Summary | None = None  # the last counters it printed
    changed: threading.Condition = field(default_factory=threading.Condition)

    def on_line(self, line: str) -> None:
        ev = events.decode(line)
        if ev is None:
            return  # not an event of ours (a stray print): nothing to act on
        with self.changed:
            self.events.append(ev)
            if isinstance(ev, events.Stats | events.Summary):
                self.latest = ev
            self.changed.notify_all()

    def wait_event(self, kind: type[E], timeout: float) -> E:
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for ev in self.events:
                    if isinstance(ev, kind):
                        return ev
                if self.proc is not None and self.proc.done.is_set():
                    raise RelayFailure(self.failure() or f"relay {self.role} exited early")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RelayFailure(f"relay {self.role} at {self.site.name} did not start")
                self.changed.wait(min(left, 0.5))

    def event(self, kind: type[E]) -> E | None:
        with self.changed:
            return next((e for e in self.events if isinstance(e, kind)), None)

    def failure(self) -> str | None:
        err = self.event(events.Failed)
        if err:
            return f"relay {self.role} at {self.site.name}: {err.message}"
        if self.proc is not None and (self.proc.exit_signal is not None
                                      or self.proc.exit_status not in (None, 0)):
            return f"relay {self.role} at {self.site.name}: {self.proc.how_it_ended()}"
        return None

    def pid(self) -> int | None:
        ev = self.event(events.Listening)
        return ev.pid if ev else None

    def killed(self) -> bool:
        """It ended by a signal, or its SSH session was lost, without a word of its own."""
        proc = self.proc
        return (proc is not None and self.event(events.Failed) is None
                and (proc.exit_signal is not None or proc.exit_status == -1))


class RelayPair:
    def __init__(self, src: SiteRuntime, dst: SiteRuntime, insecure: bool = False) -> None:
        self.src, self.dst = src, dst
        self.insecure = insecure  # frames authenticated, not encrypted
        self.secret = secrets.token_hex(32)
        self.send = RelayEnd(src, "send")
        self.recv = RelayEnd(dst, "recv")
        self.qemu_port = 0
        self.map_problem: str | None = None  # the map never came: the send relay cannot go on

    def start(self, source_disks: list[str] | str, replica_disks: list[str] | str) -> None:
        """Start both ends at once; the secret goes on stdin, so nothing lands on disk.

        The send relay listens and waits for its map (`feed_map`, also on stdin); QEMU's
        connection waits in its listen backlog meanwhile, so the map may be taken while
        libvirt prepares the destination. Several disks go in the same order to both ends
        (the map's offsets of disk i are (i << 48) | offset: teleport/disk.py). Without a disk
        there is no map: every page goes whole (zstd-compressed) through the relays.
        """
        sources = [source_disks] if isinstance(source_disks, str) else list(source_disks)
        replicas = [replica_disks] if isinstance(replica_disks, str) else list(replica_disks)
        sources, replicas = [d for d in sources if d], [d for d in replicas if d]
        if not self.dst.config.wan_addr:
            raise RelayFailure(f"site {self.dst.name} has no wan_addr in the sites config")

        def attempt(wan_port: int) -> None:
            self.qemu_port = random.randint(*PORT_RANGE)
            self._spawn_recv(wan_port, replicas)
            self._spawn_send(wan_port, sources)
            self.recv.wait_event(events.Listening, 30)
            self.send.wait_event(events.Listening, 30)

        def reset() -> None:
            self.stop()
            self.send, self.recv = RelayEnd(self.src, "send"), RelayEnd(self.dst, "recv")

        on_a_free_port(attempt, reset)

    def feed_map(self, map_text: str) -> None:
        """One map for the send relay: the first, then refreshes (framed, see mapfile)."""
        if self.send.proc is not None:
            data = mapfile.frame_update(map_text.encode())
            self.send.proc.feed(data.decode(), eof=False)

    def end_maps(self) -> None:
        """No more refreshes: the relay's stdin ends."""
        if self.send.proc is not None:
            self.send.proc.feed("", eof=True)

    def _relay_argv(self, site: SiteRuntime, *args: str) -> list[str]:
        return [*site.config.relay_command, "relay", *args, "--secret-file", "-",
                *(["--insecure"] if self.insecure else [])]

    def _spawn_recv(self, wan_port: int, replicas: list[str]) -> None:
        argv = self._relay_argv(self.dst, "recv",
                                "--listen", f"{self.dst.config.wan_addr}:{wan_port}",
                                "--to", f"127.0.0.1:{self.qemu_port}",
                                *(a for d in replicas for a in ("--disk", d)))
        self.recv.proc = self.dst.host.spawn(argv, self.recv.on_line,
                                             stdin=self.secret + "\n", close_stdin=True)

    def _spawn_send(self, wan_port: int, sources: list[str]) -> None:
        with_map = (("--map", "-", "--map-updates", *(a for d in sources for a in ("--disk", d)))
                    if sources else ())
        argv = self._relay_argv(self.src, "send",
                                "--listen", f"127.0.0.1:{self.qemu_port}",
                                "--to", f"{self.dst.config.wan_addr}:{wan_port}", *with_map)
        self.send.proc = self.src.host.spawn(argv, self.send.on_line, stdin=self.secret + "\n",
                                             close_stdin=not sources)

    def failure(self) -> str | None:
        # A relay killed outright is the cause; its peer's complaint that the WAN connection
        # closed is only the consequence (a killed send relay was reported as the recv's fault).
        dead = next((end for end in (self.send, self.recv) if end.killed()), None)
        return (self.map_problem or (dead.failure() if dead is not None else None)
                or self.recv.failure() or self.send.failure())

    def settle(self, timeout: float) -> None:
        """After a failure, give both ends a moment to end, so `failure` sees which died."""
        deadline = time.monotonic() + timeout
        for end in (self.send, self.recv):
            if end.proc is not None:
                end.proc.done.wait(max(0.0, deadline - time.monotonic()))

    def wait_done(self, timeout: float) -> None:
        """Wait for both relays to exit after the stream; raise with the reason if one failed."""
        deadline = time.monotonic() + timeout
        for end in (self.send, self.recv):
            if end.proc is not None:
                end.proc.wait(max(0.1, deadline - time.monotonic()))
        problem = self.failure()
        if problem:
            raise RelayFailure(problem)
        for end in (self.send, self.recv):
            if end.event(events.Summary) is None:
                raise RelayFailure(f"relay {end.role} at {end.site.name} did not finish")

    def stop(self) -> None:
        """Stop whatever still runs (best effort, never raises)."""
        stop_ends(self.send, self.recv)


def on_a_free_port(attempt: Callable[[int], None], reset: Callable[[], None]) -> None:
    """`attempt` on a random WAN port; a port somebody else holds: `reset`, try another."""
    last: PcteleportError | None = None
    for _ in range(3):
        try:
            attempt(random.randint(*PORT_RANGE))
            return
        except RelayFailure as exc:
            last = exc
            reset()
    raise RelayFailure(str(last))


def stop_ends(*ends: RelayEnd) -> None:
    """End each end's process by the pid it announced — TERM, then KILL if it is still there
    after 3 s — and drop its SSH channel (best effort, never raises). Not "only if its channel
    is still open": a tunnel-out outlived its channel after a failed teleport (lab fault test:
    send relay killed), holding its WAN port with nothing to carry."""
    for end in ends:
        pid = end.pid()
        try:
            if pid and end.proc is not None:
                end.site.host.run(["sh", "-c", stop_script(pid)], timeout=15)
            if end.proc is not None:
                end.proc.close()
        except PcteleportError:
            pass


def stop_script(pid: int) -> str:
    return (f"kill {pid} 2>/dev/null || exit 0; for i in $(seq 30); do "
            f"kill -0 {pid} 2>/dev/null || exit 0; sleep 0.1; done; kill -9 {pid} 2>/dev/null; "
            "true")


class TunnelPair:
    """teleport's disk copy over the WAN, encrypted like its stream (teleport/tunnel.py):
    `relay tunnel-out` at the destination forwards to libvirt's NBD server on a unix socket,
    `relay tunnel-in` at the source listens on the same path for the source QEMU. Both run
    until `stop`."""

    def __init__(self, src: SiteRuntime, dst: SiteRuntime, secret: str,
                 qemu_owner: str | None = None) -> None:
        self.src, self.dst, self.secret = src, dst, secret
        self.qemu_owner = qemu_owner  # the source QEMU's user:group, who must connect
        self.path = f"/run/pcteleport-nbd-{secrets.token_hex(6)}.sock"
        self.tin = RelayEnd(src, "tunnel-in")
        self.tout = RelayEnd(dst, "tunnel-out")

    @property
    def disks_uri(self) -> str:
        return f"unix://{self.path}"

    def start(self) -> None:
        if not self.dst.config.wan_addr:
            raise RelayFailure(f"site {self.dst.name} has no wan_addr in the sites config")

        def attempt(port: int) -> None:
            self._spawn(self.tout, "--listen", f"{self.dst.config.wan_addr}:{port}",
                        "--to", f"unix:{self.path}")
            self._spawn(self.tin, "--listen", f"unix:{self.path}",
                        "--to", f"{self.dst.config.wan_addr}:{port}",
                        *(["--owner", self.qemu_owner] if self.qemu_owner else []))
            self.tout.wait_event(events.Listening, 30)
            self.tin.wait_event(events.Listening, 30)

        def reset() -> None:
            self.stop()
            self.tin, self.tout = RelayEnd(self.src, "tunnel-in"), RelayEnd(self.dst,
                                                                            "tunnel-out")

        on_a_free_port(attempt, reset)

    def _spawn(self, end: RelayEnd, *args: str) -> None:
        argv = [*end.site.config.relay_command, "relay", end.role, *args, "--secret-file", "-"]
        end.proc = end.site.host.spawn(argv, end.on_line, stdin=self.secret + "\n",
                                       close_stdin=True)

    def failure(self) -> str | None:
        return self.tout.failure() or self.tin.failure()

    def stop(self) -> None:
        """Stop both ends (best effort, never raises); tunnel-in removes its socket."""
        stop_ends(self.tin, self.tout)
