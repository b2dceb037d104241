"""A minimal client of the guest agent's JSON-lines protocol (guest/agent.py `serve`), reached
through a VM's `pcteleport.agent` virtio-serial socket at its site. The console has its own
client over SSH; the lab uses this one to check that a guest's agent answers."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

from console.errors import PcteleportError


def call(sock_path: Path, method: str, params: dict[str, Any] | None = None,
         timeout: float = 15) -> Any:
    req = {"id": int(time.time() * 1000) % 1_000_000, "method": method, "params": params or {}}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(sock_path))
        except OSError as exc:
            raise PcteleportError(f"agent socket {sock_path}: {exc.strerror}: is the VM running "
                                  "at that site?") from exc
        s.sendall((json.dumps(req) + "\n").encode())
        buf = b""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if msg.get("id") == req["id"]:
                    if "error" in msg:
                        raise PcteleportError(f"guest agent: {msg['error'].get('message')}")
                    return msg.get("result")
            if time.monotonic() > deadline:
                raise PcteleportError(f"the guest agent did not answer {method} within "
                                      f"{timeout:.0f} s")
            try:
                chunk = s.recv(65536)
            except TimeoutError as exc:
                raise PcteleportError(f"the guest agent did not answer {method} within "
                                      f"{timeout:.0f} s") from exc
            if not chunk:
                raise PcteleportError("the guest agent closed the connection")
            buf += chunk
