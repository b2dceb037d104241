"""The guest's command shell on its `pcteleport.shell` virtio-serial port (see guestinit.py):
send "<id> <base64 script>", read output until "__PCT_DONE__ <id> <status>". Used by tests and
the lab to look inside a guest without a network; reached through the site's unix socket."""

from __future__ import annotations

import base64
import itertools
import socket
import time
from pathlib import Path

from pcteleport.errors import PcteleportError
from pcteleport.guestimage.guestinit import SHELL_DONE

_ids = itertools.count(1)


def run(sock_path: Path, script: str, timeout: float = 30) -> tuple[int, str]:
    """(exit status, output) of `script` run by the guest's sh."""
    cid = f"{int(time.time())}-{next(_ids)}"
    done = f"{SHELL_DONE} {cid} ".encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(str(sock_path))
        except OSError as exc:
            raise PcteleportError(f"guest shell socket {sock_path}: {exc.strerror}: "
                                  "is the VM running at that site?") from exc
        s.sendall(f"{cid} {base64.b64encode(script.encode()).decode()}\n".encode())
        buf = b""
        deadline = time.monotonic() + timeout
        while done not in buf or not buf[buf.index(done):].endswith(b"\n"):
            if time.monotonic() > deadline:
                raise PcteleportError(f"the guest shell did not answer within {timeout:.0f} s")
            chunk = s.recv(65536)
            if not chunk:
                raise PcteleportError("the guest shell closed the connection")
            buf += chunk
    out, tail = buf.split(done, 1)
    status = int(tail.split(b"\n", 1)[0])
    return status, out.decode(errors="replace").rstrip("\n")
