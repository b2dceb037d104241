"""Host-side client of the guest agent's JSON-lines protocol (guest/agent.py ``serve``).

Two forms over the same protocol:
- ``AgentClient``: blocking, over a unix socket (a VM's ``pcteleport.agent`` virtio-serial
  chardev socket on the host running QEMU).
- ``AsyncAgentClient``: asyncio, over any (StreamReader, StreamWriter) pair: an SSH channel
  running ``python3 agent.py serve --stdio``, asyncssh's ``open_unix_connection`` to the
  chardev socket on a site host, or a local ``asyncio.open_unix_connection``.

Requests are answered in order; ``watch`` events that arrive meanwhile are queued in
``events``. Agent errors become ``AgentRequestError`` (a PcteleportError) with the agent's
code: module-missing, not-root, unknown-disk, unsupported-filesystem, not-mounted, ...
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import secrets
import socket
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from pcteleport.errors import PcteleportError


class AgentRequestError(PcteleportError):
    def __init__(self, method: str, code: str, message: str) -> None:
        super().__init__(f"guest agent ({method}): {message}")
        self.code = code


@dataclass(frozen=True)
class AgentMap:
    """One disk's restorable map as the agent sent it."""

    header: dict[str, str]  # disk-serial, disk-name, disk-dev, source, pages, extents, ...
    text: str | None = None  # extent text form (pcteleport.teleport.mapfile.parse_text)
    binary: bytes | None = None  # compact form (b"PCTMAP1\n" + count + triples)

    def save(self, path: Path) -> Path:
        if self.binary is not None:
            path.write_bytes(self.binary)
        else:
            path.write_text(self.text or "")
        return path


def _request_line(rid: int, method: str, params: dict) -> bytes:
    msg: dict = {"id": rid, "method": method}
    if params:
        msg["params"] = params
    # The leading newline ends any half line an earlier client left on the port (a virtio-
    # serial port outlives its host connections); the agent skips blank lines.
    return b"\n" + json.dumps(msg).encode() + b"\n"


def _map_from_result(result: dict) -> AgentMap:
    if "binary_b64" in result:
        return AgentMap(result["header"], binary=base64.b64decode(result["binary_b64"]))
    return AgentMap(result["header"], text=result["text"])


def _map_params(disk: str, binary: bool, source: str, mounts: list[str] | None) -> dict:
    params: dict = {"disk": disk, "format": "binary" if binary else "text", "source": source}
    if mounts:
        params["mounts"] = mounts
    return params


class AgentClient:
    def __init__(self, sock: socket.socket, timeout: float = 30.0) -> None:
        self._sock = sock
        self._buf = b""
        # Ids unique across connections: a reply to an abandoned request of an earlier client
        # can still come out of the port after a reconnect.
        self._ids = itertools.count(secrets.randbelow(1 << 40) + 1)
        self.timeout = timeout
        self.events: deque[dict] = deque()

    @classmethod
    def connect_unix(cls, path: str | Path, timeout: float = 30.0) -> AgentClient:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(path))
        except OSError as exc:
            sock.close()
            raise PcteleportError(
                f"cannot reach the guest agent at {path}: {exc.strerror}; is the VM running "
                "with a pcteleport.agent virtio-serial port?"
            ) from exc
        return cls(sock, timeout)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _readline(self, deadline: float, what: str) -> dict:
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PcteleportError(f"the guest agent did not answer {what} in "
                                      f"{self.timeout:.0f} s: is it running in the guest?")
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(1 << 20)
            except TimeoutError:
                continue
            if not chunk:
                raise PcteleportError("the guest agent's connection closed")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def request(self, method: str, timeout: float | None = None, **params: object) -> dict:
        rid = next(self._ids)
        self._sock.sendall(_request_line(rid, method, params))
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            msg = self._readline(deadline, method)
            if "event" in msg:
                self.events.append(msg)
                continue
            if msg.get("id") != rid:
                continue  # an answer to an earlier request that timed out
            if "error" in msg:
                err = msg["error"]
                raise AgentRequestError(method, err.get("code", "?"), err.get("message", ""))
            return msg["result"]

    def next_event(self, timeout: float | None = None) -> dict:
        if self.events:
            return self.events.popleft()
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            msg = self._readline(deadline, "watch")
            if "event" in msg:
                return msg

    def hello(self) -> dict:
        return self.request("hello")

    def composition(self) -> dict:
        return self.request("composition")

    def disks(self) -> list[dict]:
        return self.request("disks")["disks"]

    def map(self, disk: str, *, binary: bool = False, source: str = "auto",
            mounts: list[str] | None = None, timeout: float | None = None) -> AgentMap:
        result = self.request("map", timeout=timeout, **_map_params(disk, binary, source, mounts))
        return _map_from_result(result)


class AsyncAgentClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 timeout: float = 30.0) -> None:
        self._reader, self._writer = reader, writer
        self._ids = itertools.count(secrets.randbelow(1 << 40) + 1)
        self._lock = asyncio.Lock()
        self.timeout = timeout
        self.events: asyncio.Queue[dict] = asyncio.Queue()

    async def _readline(self, what: str) -> dict:
        try:
            line = await asyncio.wait_for(self._reader.readline(), self.timeout)
        except TimeoutError:
            raise PcteleportError(f"the guest agent did not answer {what} in "
                                  f"{self.timeout:.0f} s: is it running in the guest?") from None
        if not line:
            raise PcteleportError("the guest agent's connection closed")
        if not line.endswith(b"\n"):  # cut short: the channel gave up on a line this long
            raise PcteleportError(f"the guest agent's answer to {what} arrived cut short after "
                                  f"{len(line)} bytes: the connection to it cannot carry a line "
                                  "this long")
        return json.loads(line)

    async def request(self, method: str, **params: object) -> dict:
        async with self._lock:
            rid = next(self._ids)
            self._writer.write(_request_line(rid, method, params))
            await self._writer.drain()
            while True:
                msg = await self._readline(method)
                if "event" in msg:
                    self.events.put_nowait(msg)
                    continue
                if msg.get("id") != rid:
                    continue
                if "error" in msg:
                    err = msg["error"]
                    raise AgentRequestError(method, err.get("code", "?"), err.get("message", ""))
                return msg["result"]

    async def next_event(self) -> dict:
        if not self.events.empty():
            return self.events.get_nowait()
        async with self._lock:
            while True:
                msg = await self._readline("watch")
                if "event" in msg:
                    return msg

    async def composition(self) -> dict:
        return await self.request("composition")

    async def map(self, disk: str, *, binary: bool = False, source: str = "auto",
                  mounts: list[str] | None = None) -> AgentMap:
        return _map_from_result(
            await self.request("map", **_map_params(disk, binary, source, mounts))
        )

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self._writer.wait_closed()
