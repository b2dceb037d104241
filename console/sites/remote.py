"""Site hosts over SSH (asyncssh), usable from plain threads.

One asyncio event loop runs in a daemon thread for all SSH traffic; blocking callers (libvirt
worker threads, the CLI) submit coroutines to it and wait for the result. Each site keeps one
SSH connection, opened on first use and reopened if it drops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncssh

from pcteleport.errors import PcteleportError
from pcteleport.sites.config import SiteConfig

T = TypeVar("T")


class RemoteError(PcteleportError):
    pass


class LoopThread:
    """An asyncio loop in its own thread; `call` runs a coroutine there and waits for it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                        name="pcteleport-ssh")
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise RemoteError("an SSH operation timed out") from None

    def close(self) -> None:
        """Cancel what still runs on the loop (a pump whose channel never ended), then stop it:
        a task left pending is destroyed at exit with a message on stderr, after the CLI's
        last line."""

        async def cancel_the_rest() -> None:
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in rest:
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(cancel_the_rest(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)


@dataclass(frozen=True)
class Completed:
    status: int
    stdout: str
    stderr: str


def _cmdline(argv: Sequence[str] | str) -> str:
    return argv if isinstance(argv, str) else shlex.join(argv)


class RemoteProcess:
    """A long-running command on a site host whose stdout lines go to a callback."""

    def __init__(self, host: SiteHost, proc: asyncssh.SSHClientProcess, on_line: Callable) -> None:
        self.host = host
        self._proc = proc
        self._on_line = on_line
        self.stderr_lines: list[str] = []
        self.exit_status: int | None = None
        self.exit_signal: str | None = None  # e.g. "TERM", when a signal ended it
        self.done = threading.Event()
        self.task: asyncio.Future[None] | None = None  # the pump, kept alive by this reference

    async def _pump(self) -> None:
        async def err() -> None:
            async for line in self._proc.stderr:
                self.stderr_lines.append(line.rstrip("\n"))

        err_task = asyncio.ensure_future(err())
        try:
            async for line in self._proc.stdout:
                with contextlib.suppress(Exception):  # a consumer bug must not stop the pump
                    self._on_line(line.rstrip("\n"))
            await self._proc.wait_closed()
            await err_task
            self.exit_status = self._proc.exit_status
            if self._proc.exit_signal:
                self.exit_signal = str(self._proc.exit_signal[0])
        except (asyncssh.Error, OSError) as exc:
            self.stderr_lines.append(f"its SSH connection to {self.host.site.name} was lost "
                                     f"({exc})")
            self.exit_status = -1
        finally:
            err_task.cancel()  # stdout may end (a lost connection) before stderr does
            self.done.set()

    def how_it_ended(self) -> str:
        """Its last word on stderr, else how it exited: for a one-line error."""
        said = next((ln.strip() for ln in reversed(self.stderr_lines) if ln.strip()), "")
        if said:
            return said
        if self.exit_signal:
            return f"killed by signal {self.exit_signal}"
        return f"exit status {self.exit_status}"

    def wait(self, timeout: float | None = None) -> int | None:
        self.done.wait(timeout)
        return self.exit_status

    def feed(self, data: str, eof: bool = True) -> None:
        """Write to the command's stdin (from any thread), then close it unless told not to."""

        def write() -> None:
            with contextlib.suppress(OSError, asyncssh.Error, BrokenPipeError):
                self._proc.stdin.write(data)
                if eof:
                    self._proc.stdin.write_eof()

        self.host.loop.loop.call_soon_threadsafe(write)

    def close(self) -> None:
        """Close the channel (the remote side is stopped by its own means, e.g. kill PID)."""
        self.host.loop.loop.call_soon_threadsafe(self._proc.close)


class SiteHost:
    """Commands and sockets on one site's host, over its SSH login."""

    def __init__(self, site: SiteConfig, loop: LoopThread) -> None:
        self.site = site
        self.loop = loop
        self._conn: asyncssh.SSHClientConnection | None = None
        self._lock: asyncio.Lock | None = None

    async def connection(self) -> asyncssh.SSHClientConnection:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            conn = self._conn
            if conn is not None and not conn.is_closed():
                return conn
            login = self.site.ssh
            try:
                self._conn = await asyncio.wait_for(asyncssh.connect(
                    login.host, port=login.port, username=login.user,
                    client_keys=[login.key] if login.key else (),
                    known_hosts=login.known_hosts if login.known_hosts else (),
                    keepalive_interval=15,
                ), 20)
            except (OSError, asyncssh.Error, TimeoutError) as exc:
                raise RemoteError(
                    f"cannot log in to site {self.site.name} ({login.user}@{login.host}:"
                    f"{login.port}): {exc or type(exc).__name__}"
                ) from None
            return self._conn

    async def arun(self, argv: Sequence[str] | str, input: bytes | str | None = None,
                   timeout: float = 60) -> Completed:
        conn = await self.connection()
        try:
            res = await asyncio.wait_for(
                conn.run(_cmdline(argv), input=input, check=False), timeout
            )
        except TimeoutError:
            raise RemoteError(f"at {self.site.name}: '{_cmdline(argv)}' timed out") from None
        except (OSError, asyncssh.Error) as exc:
            raise RemoteError(f"at {self.site.name}: lost the SSH connection: {exc}") from None
        out, err = res.stdout or "", res.stderr or ""
        return Completed(
            res.exit_status if res.exit_status is not None else -1,
            out if isinstance(out, str) else out.decode(errors="replace"),
            err if isinstance(err, str) else err.decode(errors="replace"),
        )

    def run(self, argv: Sequence[str] | str, input: bytes | str | None = None,
            timeout: float = 60) -> Completed:
        return self.loop.call(self.arun(argv, input, timeout), timeout + 25)

    def check(self, argv: Sequence[str] | str, input: bytes | str | None = None,
              timeout: float = 60) -> str:
        res = self.run(argv, input, timeout)
        if res.status != 0:
            detail = (res.stderr.strip() or res.stdout.strip()).splitlines()
            raise RemoteError(
                f"at {self.site.name}: '{_cmdline(argv)}' failed: "
                f"{detail[-1] if detail else f'exit status {res.status}'}"
            )
        return res.stdout

    def spawn(self, argv: Sequence[str] | str, on_line: Callable[[str], None],
              stdin: str = "", close_stdin: bool = False) -> RemoteProcess:
        """Start a command; STDIN is written at once, and stdin stays open unless CLOSE_STDIN
        (more may follow: see `RemoteProcess.feed`)."""

        async def start() -> RemoteProcess:
            conn = await self.connection()
            proc = await conn.create_process(_cmdline(argv))
            if stdin:
                proc.stdin.write(stdin)
            if close_stdin:
                proc.stdin.write_eof()
            rp = RemoteProcess(self, proc, on_line)
            rp.task = asyncio.ensure_future(rp._pump())
            return rp

        return self.loop.call(start(), 40)

    def close(self) -> None:
        if self._conn is not None:
            self.loop.loop.call_soon_threadsafe(self._conn.close)


class JsonLines:
    """A command on a site host that answers in JSON lines, each an object with an "event":
    a wait is for one event by name; an "error" line, or the command's end, fails it with
    `who` and the reason, as `error`. Requests go to its stdin (`send`)."""

    def __init__(self, host: SiteHost, argv: Sequence[str], who: str,
                 error: type[PcteleportError] = RemoteError) -> None:
        self.who, self.error = who, error
        self._lines: list[dict[str, Any]] = []
        self._cv = threading.Condition()
        self.proc = host.spawn(argv, self._on_line)

    def _on_line(self, line: str) -> None:
        try:
            ev = json.loads(line)
        except ValueError:
            return
        if isinstance(ev, dict):
            with self._cv:
                self._lines.append(ev)
                self._cv.notify_all()

    def send(self, data: str) -> None:
        self.proc.feed(data, eof=False)

    def wait(self, event: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                for i, ev in enumerate(self._lines):
                    if ev.get("event") in (event, "error"):
                        del self._lines[i]
                        if ev["event"] == "error":
                            raise self.error(f"{self.who}: {ev.get('message')}")
                        return ev
                if self.proc.done.is_set():
                    raise self.error(f"{self.who}: {self.proc.how_it_ended()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise self.error(f"{self.who}: no {event} within {timeout:.0f} s")
                self._cv.wait(min(left, 0.5))

    def take(self, event: str) -> list[dict[str, Any]]:
        """The lines of `event` received so far, in order (they are not seen again)."""
        with self._cv:
            out = [ev for ev in self._lines if ev.get("event") == event]
            self._lines = [ev for ev in self._lines if ev.get("event") != event]
        return out

    def close(self, wait_s: float = 0.0) -> None:
        """End its stdin (it ends when its stdin does), wait up to `wait_s`, drop the channel."""
        self.proc.feed("", eof=True)
        if wait_s:
            self.proc.wait(wait_s)
        self.proc.close()
