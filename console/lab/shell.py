"""Running host commands for the lab, and entering a site's namespaces.

Every failure becomes a PcteleportError naming the command and its stderr, so the operator sees
one line saying what broke."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from pcteleport.errors import PcteleportError

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def run(
    cmd: Sequence[str], *, check: bool = True, input: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            list(cmd),
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except FileNotFoundError as exc:
        raise PcteleportError(
            f"{cmd[0]} is not installed: run scripts/setup.sh as root"
        ) from exc
    except subprocess.TimeoutExpired as exc:
        raise PcteleportError(f"`{' '.join(cmd)}` took more than {timeout:.0f} s") from exc
    if check and proc.returncode != 0:
        err = (proc.stderr or proc.stdout).strip().splitlines()
        last = err[-1] if err else f"exit status {proc.returncode}"
        raise PcteleportError(f"`{' '.join(cmd)}` failed: {last}")
    return proc


def in_netns(netns: str, cmd: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *cmd]


def in_site(holder_pid: int, cmd: Sequence[str]) -> list[str]:
    """A command line that runs `cmd` in a site's mount, UTS and network namespaces."""
    return ["nsenter", "-t", str(holder_pid), "-m", "-u", "-n", "--", *cmd]


def netns_names() -> set[str]:
    out = run(["ip", "netns", "list"]).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


@contextlib.contextmanager
def netns(name: str) -> Iterator[None]:
    """Run the calling thread inside network namespace `name` (sockets keep it afterwards)."""
    with open("/proc/thread-self/ns/net", "rb") as orig, open(f"/run/netns/{name}", "rb") as ns:
        _setns(ns.fileno())
        try:
            yield
        finally:
            _setns(orig.fileno())


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise PcteleportError(f"cannot enter a network namespace: {os.strerror(err)} (run as root)")


def read_pid(path: Path) -> int | None:
    """The pid in `path` if that process is alive, else None."""
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid_alive(pid) else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0); treat it as gone.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def stop_pid(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM, wait, then SIGKILL: one process we started, by its id."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.1)


def wait_for(
    cond: Callable[[], object], timeout: float, what: str, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(interval)
    raise PcteleportError(f"timed out after {timeout:.0f} s waiting for {what}")


def spawn_detached(cmd: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    """Start a long-lived daemon in its own session, output to `log`, no stdin."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(cmd), stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True
        )


@contextlib.contextmanager
def locked(path: Path, what: str, timeout: float = 600) -> Iterator[None]:
    """An exclusive lock on `path` (flock), waiting at most `timeout` seconds."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise PcteleportError(f"another `pcteleport lab` command holds {path} for "
                                          f"more than {timeout:.0f} s: wait for it to finish, "
                                          f"then retry {what}") from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
