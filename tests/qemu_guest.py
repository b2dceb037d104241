"""Boot a real TCG guest with qemu-system-x86_64 (no libvirt), for tests.

API (test support; product boot material comes from the console/guestimage/ package):

    from pcteleport import guestimage
    from qemu_guest import Disk, QemuGuest, make_ext4   # tests/ is on sys.path under pytest

    make_ext4(tmp / "data.raw", {"a.bin": b"..."}, size_mib=96)      # host-side ext4 image
    boot = guestimage.stage1_boot(script)     # busybox only, ~2.5 s; or guestimage.debian_boot()
    with QemuGuest(boot, tmp / "a", memory_mib=256,
                   disks=[Disk(tmp / "data.raw", serial="data")],
                   machine="pc", smp=1,              # q35 works too
                   qemu="qemu-system-x86_64") as g:  # or another build, e.g. /opt/qemu72/...
        g.wait_for("PCTELEPORT-READY")            # -> the console line holding the marker
        out = g.run("sha256sum /mnt/*")           # -> str (stdout+stderr); raises if status != 0
        res = g.run("false", check=False)         # -> CommandResult(status, output)
        g.qmp("query-status")                     # -> the "return" value; QmpError on "error"
        g.migrate("exec:cat > /tmp/stream")       # -> final query-migrate (status "completed")
        g.memory_dump(tmp / "mem")                # guest RAM bytes (pmemsave, VM paused)
        g.console()                               # everything the serial console printed
    with g.destination(tmp / "b", "exec:cat /tmp/stream") as b:   # same devices as g
        b.wait_running()                          # the incoming migration finished, VM runs
        b.run("sha256sum /mnt/*")                 # the same guest, continued

- ``run`` talks to a busybox shell inside the guest over the virtio-serial port
  ``pcteleport.shell`` (protocol in console/guestimage/guestinit.py); it keeps working after a
  migration, because the guest side survives and the destination has the same port.
- ``agent=True`` adds the ``pcteleport.agent`` port; ``g.agent_socket`` is its unix socket.
- Disks are raw virtio-blk with ``serial=``; the guest sees /dev/disk/by-id/virtio-SERIAL.
  A root image (debian_boot) is attached with snapshot=on, so the cached image never changes.
- ``incoming`` is passed to ``-incoming`` (``tcp:127.0.0.1:PORT``, ``exec:cat FILE``, or
  ``defer`` and then ``g.qmp("migrate-incoming", uri=...)``); ``wait_running()`` after.
- Every guest has a hard timeout (``timeout_s``) after which qemu is killed; ``close()`` (the
  context manager's exit) always kills qemu. A guest panic exits 0 with ``-no-reboot``, so
  tests wait for markers, never for the exit code.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pcteleport.guestimage import GuestBoot, guestinit

QEMU = "qemu-system-x86_64"


def debian_guest_boot(*tools: str) -> GuestBoot:
    """The Debian guest's boot material for a test, or why the test cannot run (`require`:
    a skip outside CI, a failure under CI=true). `tools`: host commands the test needs too."""
    import shutil

    from pcteleport import guestimage
    from pcteleport.errors import PcteleportError
    from tests.conftest import require

    require(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86_64 is not installed")
    require(os.geteuid() == 0, "needs root (chroot to build the guest root filesystem)")
    for tool in tools:
        require(shutil.which(tool) is not None, f"{tool} is not installed (scripts/setup.sh)")
    try:
        return guestimage.debian_boot()
    except PcteleportError as exc:
        require(False, str(exc))
        raise  # (require raised already)


class GuestError(AssertionError):
    """The guest did not do what the test waited for (with the console's tail)."""


class QmpError(RuntimeError):
    pass


@dataclass(frozen=True)
class Disk:
    path: Path
    serial: str
    format: str = "raw"
    readonly: bool = False
    snapshot: bool = False


@dataclass(frozen=True)
class CommandResult:
    status: int
    output: str


def make_ext4(path: Path, files: dict[str, bytes], size_mib: int, label: str = "data") -> Path:
    """A raw ext4 image holding ``files`` (relative path -> bytes), built without mounting."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for rel, data in files.items():
            p = Path(tmp) / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
        path.unlink(missing_ok=True)
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-b", "4096", "-L", label, "-m", "0", "-d", tmp, str(path),
             f"{size_mib}M"],
            check=True,
        )
    return path


class QemuGuest:
    def __init__(
        self,
        boot: GuestBoot,
        workdir: Path,
        *,
        memory_mib: int = 256,
        disks: list[Disk] | tuple[Disk, ...] = (),
        incoming: str | None = None,
        agent: bool = False,
        shell: bool = True,
        kernel_args: tuple[str, ...] = (),
        extra_args: tuple[str, ...] = (),
        timeout_s: float = 300,
        machine: str = "pc",
        smp: int = 1,
        qemu: str = QEMU,
    ) -> None:
        self.boot = boot
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.memory_mib = memory_mib
        self.disks = list(disks)
        if boot.root_image is not None:
            self.disks.insert(0, Disk(boot.root_image, boot.root_serial, snapshot=True))
        self.incoming = incoming
        self.console_path = self.workdir / "console.log"
        self.qmp_socket = self.workdir / "qmp.sock"
        self.shell_socket = self.workdir / "shell.sock" if shell else None
        self.agent_socket = self.workdir / "agent.sock" if agent else None
        self.kernel_args = kernel_args
        self.extra_args = extra_args
        self.timeout_s = timeout_s
        self.machine = machine
        self.smp = smp
        self.qemu = qemu
        self.proc: subprocess.Popen[bytes] | None = None
        self._qmp: _Qmp | None = None
        self._shell: socket.socket | None = None
        self._shell_buf = b""
        self._ids = itertools.count(1)
        self._watchdog: threading.Timer | None = None
        self.started_at = 0.0

    def destination(self, workdir: Path, incoming: str, **changes: object) -> QemuGuest:
        """A not-yet-started twin with ``-incoming``: a migration needs the same devices
        (disks, virtio-serial ports, memory, machine) at both ends."""
        disks = [d for d in self.disks if self.boot.root_image is None or d.path !=
                 self.boot.root_image]
        settings: dict = {
            "memory_mib": self.memory_mib, "disks": disks, "agent": self.agent_socket is not None,
            "shell": self.shell_socket is not None, "kernel_args": self.kernel_args,
            "extra_args": self.extra_args, "timeout_s": self.timeout_s,
            "machine": self.machine, "smp": self.smp, "qemu": self.qemu,
        }
        settings.update(changes)
        return QemuGuest(self.boot, workdir, incoming=incoming, **settings)

    # --- life cycle ---------------------------------------------------------------------------

    def command_line(self) -> list[str]:
        boot = self.boot.with_args(*self.kernel_args) if self.kernel_args else self.boot
        args = [
            self.qemu, "-machine", self.machine, "-accel", "tcg", "-cpu", "max",
            "-m", str(self.memory_mib), "-smp", str(self.smp),
            "-nodefaults", "-nographic", "-no-reboot",
            *boot.qemu_args(),
            "-chardev", f"file,id=con,path={self.console_path}",
            "-serial", "chardev:con",
            "-qmp", f"unix:{self.qmp_socket},server=on,wait=off",
        ]
        for i, d in enumerate(self.disks):
            opts = [f"file={d.path}", "if=none", f"id=disk{i}", f"format={d.format}",
                    "cache=unsafe" if d.snapshot else "cache=writeback"]
            if d.readonly:
                opts.append("readonly=on")
            if d.snapshot:
                opts.append("snapshot=on")
            args += ["-drive", ",".join(opts),
                     "-device", f"virtio-blk-pci,drive=disk{i},serial={d.serial}"]
        ports = [(n, s) for n, s in (("shell", self.shell_socket), ("agent", self.agent_socket))
                 if s is not None]
        if ports:
            args += ["-device", "virtio-serial-pci,id=vser"]
        for name, sock in ports:
            port = guestinit.SHELL_PORT if name == "shell" else guestinit.AGENT_PORT
            args += ["-chardev", f"socket,id={name},path={sock},server=on,wait=off",
                     "-device", f"virtserialport,bus=vser.0,chardev={name},name={port}"]
        if self.incoming:
            args += ["-incoming", self.incoming]
        return [*args, *self.extra_args]

    def start(self) -> QemuGuest:
        for p in (self.console_path, self.qmp_socket, self.shell_socket, self.agent_socket):
            if p is not None:
                p.unlink(missing_ok=True)
        log = open(self.workdir / "qemu.log", "wb")  # noqa: SIM115 - owned by the child
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            self.command_line(), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True,
        )
        log.close()
        self._watchdog = threading.Timer(self.timeout_s, self._kill)
        self._watchdog.daemon = True
        self._watchdog.start()
        try:
            self._await(lambda: self.qmp_socket.exists(), 30, "QMP socket")
            self._qmp = _Qmp(str(self.qmp_socket))
        except BaseException:
            self.close()  # __exit__ does not run when __enter__ fails
            raise
        return self

    def close(self) -> None:
        if self._watchdog:
            self._watchdog.cancel()
        for s in (self._shell, self._qmp):
            if s is not None:
                s.close()
        self._shell = self._qmp = None
        self._kill()

    def _kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> QemuGuest:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # --- console ------------------------------------------------------------------------------

    def console(self) -> str:
        try:
            return self.console_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, marker: str, timeout: float = 60, after: int = 0) -> str:
        """The first whole console line (from character ``after`` on) that contains ``marker``.
        Whole: a line the guest is still printing (the serial port is slow under TCG) is not
        read yet — a half-written "CHECKSUM bdc128d" once failed a run under load."""
        found: list[str] = []

        def seen() -> bool:
            text = self.console()[after:]
            for line in text[:text.rfind("\n") + 1].splitlines():
                if marker in line:
                    found.append(line)
                    return True
            return False

        self._await(seen, timeout, f"console marker {marker!r}")
        return found[0]

    def _await(self, cond, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if not self.alive():
                raise GuestError(f"qemu exited while waiting for {what}\n{self._diagnosis()}")
            if time.monotonic() > deadline:
                raise GuestError(f"timed out after {timeout}s waiting for {what}\n"
                                 f"{self._diagnosis()}")
            time.sleep(0.05)

    def _diagnosis(self) -> str:
        qemu_log = (self.workdir / "qemu.log")
        tail = "\n".join(self.console().splitlines()[-25:])
        err = qemu_log.read_text(errors="replace")[-2000:] if qemu_log.exists() else ""
        return f"--- console tail ---\n{tail}\n--- qemu stderr ---\n{err}"

    # --- QMP ----------------------------------------------------------------------------------

    def qmp(self, command: str, **arguments: object) -> object:
        if self._qmp is None:
            raise GuestError("QMP is not connected (guest not started)")
        try:
            return self._qmp.execute(command, arguments)
        except (OSError, QmpError) as exc:
            if self.alive() and isinstance(exc, QmpError) and "closed" not in str(exc):
                raise
            raise GuestError(f"QMP {command}: {exc}; qemu "
                             f"{'runs' if self.alive() else 'exited'}\n{self._diagnosis()}"
                             ) from exc

    def wait_running(self, timeout: float = 120) -> None:
        """Until the VM runs (an incoming migration finished); fails if it ends up elsewhere."""
        def running() -> bool:
            status = self.qmp("query-status")["status"]  # type: ignore[index]
            if status in ("shutdown", "internal-error", "guest-panicked"):
                raise GuestError(f"VM status {status}\n{self._diagnosis()}")
            return status == "running"

        self._await(running, timeout, "VM status 'running'")

    def memory_dump(self, path: Path) -> bytes:
        """Guest RAM from physical address 0, read with QMP pmemsave while the VM is paused
        (so nothing moves meanwhile). Guest physical = offset only below the PCI hole: keep
        memory_mib under 2 GiB (q35) or 3 GiB (pc)."""
        was_running = self.qmp("query-status")["status"] == "running"  # type: ignore[index]
        if was_running:
            self.qmp("stop")
        try:
            self.qmp("pmemsave", val=0, size=self.memory_mib << 20, filename=str(path))
        finally:
            if was_running:
                self.qmp("cont")
        return Path(path).read_bytes()

    def migrate(self, uri: str, timeout: float = 120, **params: object) -> dict:
        """Start an outgoing migration and wait for it; returns the final query-migrate."""
        if params:
            self.qmp("migrate-set-parameters", **params)
        self.qmp("migrate", uri=uri)
        result: dict = {}

        def done() -> bool:
            result.clear()
            result.update(self.qmp("query-migrate"))  # type: ignore[arg-type]
            status = result.get("status")
            if status in ("failed", "cancelled"):
                raise GuestError(f"migration {status}: {result.get('error-desc', '')}")
            return status == "completed"

        self._await(done, timeout, f"migration to {uri}")
        time.sleep(0.3)  # total-time/downtime can still read 0 right after "completed"
        return self.qmp("query-migrate")  # type: ignore[return-value]

    # --- commands in the guest ----------------------------------------------------------------

    def run(self, script: str, timeout: float = 60, check: bool = True) -> str | CommandResult:
        """Run a shell script in the guest; its output (check=True) or a CommandResult."""
        if self.shell_socket is None:
            raise GuestError("this guest was started with shell=False")
        if self._shell is None:
            self._await(lambda: self.shell_socket.exists(), 30, "shell socket")
            self._shell = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._shell.connect(str(self.shell_socket))
            self._shell_buf = b""
        cid = next(self._ids)
        payload = base64.b64encode(script.encode()).decode()
        self._shell.sendall(f"{cid} {payload}\n".encode())
        done = f"\n{guestinit.SHELL_DONE} {cid} ".encode()
        deadline = time.monotonic() + timeout
        while True:
            idx = self._shell_buf.find(done)
            end = self._shell_buf.find(b"\n", idx + len(done)) if idx >= 0 else -1
            if end >= 0:
                output = self._shell_buf[:idx].decode(errors="replace")
                status = int(self._shell_buf[idx + len(done):end])
                self._shell_buf = self._shell_buf[end + 1:]
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.alive():
                raise GuestError(f"guest command {script!r} gave no answer in {timeout}s\n"
                                 f"{self._diagnosis()}")
            self._shell.settimeout(min(remaining, 0.5))
            try:
                chunk = self._shell.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise GuestError(f"guest shell closed during {script!r}\n{self._diagnosis()}")
            self._shell_buf += chunk
        if not check:
            return CommandResult(status, output)
        if status != 0:
            raise GuestError(f"guest command {script!r} exited {status}:\n{output}")
        return output


class _Qmp:
    """A minimal synchronous QMP client: one command at a time, events kept in ``events``."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.sock.connect(path)
                break
            except (ConnectionRefusedError, FileNotFoundError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.file = self.sock.makefile("rwb")
        self.events: list[dict] = []
        self._read()  # greeting
        self.execute("qmp_capabilities", {})

    def _read(self) -> dict:
        line = self.file.readline()
        if not line:
            raise QmpError("QMP connection closed")
        return json.loads(line)

    def execute(self, command: str, arguments: dict) -> object:
        msg: dict = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.file.write(json.dumps(msg).encode() + b"\n")
        self.file.flush()
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
            elif "error" in reply:
                raise QmpError(f"{command}: {reply['error'].get('desc')}")
            elif "return" in reply:
                return reply["return"]

    def close(self) -> None:
        try:
            self.file.close()
            self.sock.close()
        except OSError:
            pass
