"""Shared test helpers.

Tests that need QEMU, root, the guest kernel or the lab run under CI=true and never skip
there: a skip in CI would hide a missing install step. Elsewhere they skip with a reason.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# Relays and image commands the product starts on lab site hosts run the sites config's
# `relay_command` over SSH, which does not pass this process's environment on. When the tests
# import pcteleport through PYTHONPATH (a git worktree beside the installed one), the labs they
# bring up name a command that imports it the same way, or the sites would run the installed
# code instead of the code under test.
if os.environ.get("PYTHONPATH") and "PCTELEPORT_LAB_RELAY_COMMAND" not in os.environ:
    import shlex
    import sys

    os.environ["PCTELEPORT_LAB_RELAY_COMMAND"] = shlex.join(
        ["env", f"PYTHONPATH={os.environ['PYTHONPATH']}", sys.executable, "-m",
         "pcteleport.cli"])


def require(condition: bool, reason: str) -> None:
    """Skip outside CI when `condition` is false; fail loudly inside CI."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"CI must provide this, but: {reason}")
    pytest.skip(reason)


def require_guest_kernel():
    """The Debian guest kernel for QEMU tests (needs QEMU and root too), or skip/fail."""
    import shutil

    from pcteleport import guestimage
    from pcteleport.errors import PcteleportError

    require(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86_64 is not installed")
    require(os.geteuid() == 0, "needs root")
    try:
        return guestimage.guest_kernel()
    except PcteleportError as exc:
        require(False, str(exc))
        raise


@contextlib.contextmanager
def lab_instance(name: str) -> Iterator[None]:
    """Run the enclosed code (and the CLI subprocesses it starts) against the lab instance
    `name`, a lab of its own beside any other; the variable is restored afterwards."""
    old = os.environ.get("PCTELEPORT_LAB_INSTANCE")
    os.environ["PCTELEPORT_LAB_INSTANCE"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PCTELEPORT_LAB_INSTANCE", None)
        else:
            os.environ["PCTELEPORT_LAB_INSTANCE"] = old



def _no_keepalive_timeouts(logs: dict, start: dict[str, int]) -> None:
    """libvirtd closed none of the connections while the lab was in use for missed keepalive
    answers: a client whose event loop stopped answering loses its connections when idle,
    and a destination whose connection closes kills the VM migrating in."""
    for name, log in logs.items():
        if not log.exists():
            continue
        with log.open("rb") as f:
            f.seek(start[name])
            new = f.read().decode(errors="replace")
        dropped = [line for line in new.splitlines() if "keepalive timeout" in line]
        assert not dropped, f"libvirtd at {name} dropped a connection: {dropped[0]}"


@contextlib.contextmanager
def lab_backend(name: str, vms: str, records: os.PathLike[str], wan: str = "fast") -> Iterator:
    """A fresh lab instance `name` with `vms` (comma-separated) on the `wan` profile, and a
    LibvirtBackend on it storing its records in `records`; the instance goes down afterwards."""
    import subprocess
    import sys
    from pathlib import Path

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pcteleport.cli", *args], text=True,
                              capture_output=True, timeout=900, stdin=subprocess.DEVNULL,
                              cwd=Path(__file__).resolve().parent.parent)

    with lab_instance(name):  # the CLI subprocesses inherit it
        old_records = os.environ.get("PCTELEPORT_RECORDS")
        os.environ["PCTELEPORT_RECORDS"] = str(records)
        try:
            cli("lab", "down")
            up = cli("lab", "up", "--vms", vms, "--wan", wan)
            assert up.returncode == 0, up.stderr
            from pcteleport.lab.paths import LabPaths
            from pcteleport.record_store import RecordStore
            from pcteleport.sites.libvirt.backend import LibvirtBackend

            b = LibvirtBackend.from_config(LabPaths.default().sites_toml)
            b.store = RecordStore(Path(records))
            logs = {name: Path(rt.config.lab["host_dir"]) / "log-libvirt" / "libvirtd.log"
                    for name, rt in b.sites_rt.items()}
            start = {name: log.stat().st_size if log.exists() else 0
                     for name, log in logs.items()}
            try:
                yield b
            finally:
                b.close()
            _no_keepalive_timeouts(logs, start)
        finally:
            cli("lab", "down")
            if old_records is None:
                os.environ.pop("PCTELEPORT_RECORDS", None)
            else:
                os.environ["PCTELEPORT_RECORDS"] = old_records
