"""One migration of a VM at a time, whoever starts it (console, CLI, bench, another host).

The lock is an flock(1) on the VM's source host, held by a command that pcteleport keeps
running over SSH for the whole migration: it is released when that command's stdin closes —
also when the pcteleport process holding it dies — so a lock never outlives its holder.
Why: two runs at once let the second one's failure clean-up discard the first one's
destination (measured: a soak's VM ended up running nowhere).
"""

from __future__ import annotations

import threading
import time

from pcteleport.errors import PcteleportError
from pcteleport.sites.libvirt.site_runtime import SiteRuntime

LOCK_DIR = "/run/lock"
BUSY = 75  # flock -E: the lock is held by someone else


class VmBusy(PcteleportError):
    pass


class VmLock:
    def __init__(self, site: SiteRuntime, vm_uuid: str, vm_name: str) -> None:
        self.site = site
        self.path = f"{LOCK_DIR}/pcteleport-{vm_uuid}.lock"
        held = threading.Event()

        def on_line(line: str) -> None:
            if line.strip() == "held":
                held.set()

        argv = ["flock", "-n", "-E", str(BUSY), self.path,
                "sh", "-c", "echo held; exec cat >/dev/null"]
        self._proc = site.host.spawn(argv, on_line)
        deadline = time.monotonic() + 30
        while not held.wait(0.1):
            if time.monotonic() > deadline:
                self.release()
                raise PcteleportError(f"cannot lock VM {vm_name} for its migration at "
                                      f"{site.name}: no answer from flock within 30 s")
            if self._proc.done.is_set():
                status = self._proc.exit_status
                if status == BUSY:
                    raise VmBusy(f"VM {vm_name} is being migrated already (another pcteleport "
                                 f"holds {self.path} at {site.name}): wait for it, or abort it "
                                 f"with `pcteleport abort {vm_name}`")
                raise PcteleportError(f"cannot lock VM {vm_name} for its migration at "
                                      f"{site.name}: {self._proc.how_it_ended()}")

    def release(self) -> None:
        self._proc.feed("", eof=True)  # cat ends, flock lets go
        self._proc.wait(10)
        self._proc.close()
