"""One lab site: a holder process that owns the site's mount namespace (inside its network
namespace), a libvirtd and an sshd running in both.

The holder bind-mounts the site's private libvirt directories, passwd/group and /srv, and a tmpfs
on /run; everything else of the host stays visible (binaries, the guest image cache)."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from pcteleport.errors import PcteleportError
from pcteleport.lab import shell, tls
from pcteleport.lab.paths import (
    CREATED_DIRS,
    SITE_AGENT_DIR,
    SITE_IMAGE_DIR,
    SITE_VM_DIR,
    LabPaths,
)
from pcteleport.lab.topology import Site

LIBVIRT_DIRS = {  # host path -> SitePaths attribute holding the site's private copy
    "/etc/libvirt": "etc_libvirt",
    "/var/lib/libvirt": "lib_libvirt",
    "/var/log/libvirt": "log_libvirt",
    "/var/cache/libvirt": "cache_libvirt",
}
LIBVIRTD = "/usr/sbin/libvirtd"
SSHD = "/usr/sbin/sshd"
# libvirtd refuses to start without this user (libvirt-daemon-system would create it).
QEMU_USER = "libvirt-qemu:x:64055:64055:Libvirt Qemu,,,:/var/lib/libvirt:/usr/sbin/nologin\n"
QEMU_GROUPS = ("libvirt-qemu:x:64055:\n", "kvm:x:64056:\n", "libvirt:x:64057:\n")


def holder_pid(paths: LabPaths, s: Site) -> int | None:
    return shell.read_pid(paths.site(s.name).holder_pid)


def require_holder(paths: LabPaths, s: Site) -> int:
    pid = holder_pid(paths, s)
    if pid is None:
        raise PcteleportError(f"lab site {s.name} is not running: run `pcteleport lab up`")
    return pid


def ensure_mountpoints(paths: LabPaths) -> None:
    """The libvirt directories must exist on the host to be mount points; remember the ones a
    lab creates (in one file shared by every lab instance) so the last `down` removes them."""
    created = set(_read_lines(CREATED_DIRS))
    for d in LIBVIRT_DIRS:
        if not os.path.isdir(d):
            os.makedirs(d)
            created.add(d)
    CREATED_DIRS.parent.mkdir(parents=True, exist_ok=True)
    _write(CREATED_DIRS, "".join(f"{d}\n" for d in sorted(created)))


def remove_mountpoints() -> None:
    """Remove the directories a lab created, unless a lab still mounts over them somewhere:
    removing a mount point in another mount namespace would silently detach that lab's mount."""
    kept = []
    in_use = _mount_points_in_use()
    for d in sorted(_read_lines(CREATED_DIRS), key=len, reverse=True):
        if d in in_use:
            kept.append(d)
            continue
        try:
            os.rmdir(d)
        except FileNotFoundError:
            pass
        except OSError:
            continue  # not empty: something else now uses it, so it is not ours to remove
    if kept:
        _write(CREATED_DIRS, "".join(f"{d}\n" for d in sorted(kept)))
    else:
        CREATED_DIRS.unlink(missing_ok=True)


def _mount_points_in_use() -> set[str]:
    """Mount points of every mount namespace on the host (through each process's mountinfo)."""
    points: set[str] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            text = (proc / "mountinfo").read_text()
        except OSError:
            continue
        points.update(line.split()[4] for line in text.splitlines() if line.count(" ") >= 4)
    return points


def _read_lines(path: Path) -> list[str]:
    try:
        return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    except FileNotFoundError:
        return []


def prepare_files(paths: LabPaths, s: Site) -> bool:
    """The site's private /etc/libvirt, passwd/group, /srv tree and sshd config; True when
    libvirtd's or QEMU's config changed (a running libvirtd must read it again)."""
    sp = paths.site(s.name)
    for attr in (*LIBVIRT_DIRS.values(), "run_libvirt", "srv"):
        getattr(sp, attr).mkdir(parents=True, exist_ok=True)
    for sub in (SITE_IMAGE_DIR, SITE_VM_DIR, SITE_AGENT_DIR):
        sp.host_path(sub).mkdir(parents=True, exist_ok=True)
    etc = sp.etc_libvirt
    for name in ("libvirt.conf", "libvirt-admin.conf"):
        if Path("/etc/libvirt", name).exists() and not (etc / name).exists():
            shutil.copy2(Path("/etc/libvirt", name), etc / name)
    uuid_file = sp.root / "host_uuid"
    if not uuid_file.exists():
        uuid_file.write_text(f"{uuid.uuid4()}\n")
    host_uuid = uuid_file.read_text().strip()
    changed = _write(etc / "libvirtd.conf",
        "# pcteleport lab site: UNIX socket only (the operator comes in over SSH)\n"
        f'host_uuid = "{host_uuid}"\n'
        'unix_sock_rw_perms = "0700"\n'
        'auth_unix_rw = "none"\n'
        'auth_unix_ro = "none"\n'
        'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"\n'
    )
    changed |= _write(etc / "qemu.conf",
        "# pcteleport lab site: QEMU runs as root without a security driver, no private /dev,\n"
        "# console output to files (no virtlogd in the site).\n"
        'user = "root"\n'
        'group = "root"\n'
        'security_driver = "none"\n'
        "dynamic_ownership = 0\n"
        "remember_owner = 0\n"
        "namespaces = []\n"
        'stdio_handler = "file"\n'
        "migration_port_min = 49152\n"
        "migration_port_max = 49215\n"
        "# TLS migration (VIR_MIGRATE_TLS; the NBD disk copy too): the lab's CA and this host's\n"
        "# certificates (lab/tls.py); both ends check the other's certificate\n"
        f'default_tls_x509_cert_dir = "{tls.SITE_TLS_DIR}"\n'
        "default_tls_x509_verify = 1\n"
    )
    passwd = Path("/etc/passwd").read_text()
    if "\nlibvirt-qemu:" not in "\n" + passwd:
        passwd += QEMU_USER
    _write(sp.passwd, passwd)
    group = Path("/etc/group").read_text()
    for line in QEMU_GROUPS:
        if "\n" + line.split(":")[0] + ":" not in "\n" + group:
            group += line
    _write(sp.group, group)
    _write(sp.sshd_config,
        "# pcteleport lab site host login (runs in the site's namespaces)\n"
        f"ListenAddress {s.mgmt_addr}\n"
        f"ListenAddress {s.wan_addr}\n"
        f"HostKey {sp.host_key}\n"
        f"PidFile {sp.sshd_pid}\n"
        f"AuthorizedKeysFile {paths.key}.pub\n"
        "PermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "StrictModes no\n"
        "AllowTcpForwarding yes\n"
        "AllowStreamLocalForwarding yes\n"
        "X11Forwarding no\n"
        "PrintMotd no\n"
        "UseDNS no\n"
        "MaxStartups 50:30:100\n"
        "Subsystem sftp internal-sftp\n"
    )
    return changed


def _write(path: Path, text: str) -> bool:
    """Write only on change: a second `lab up` leaves every file as it was. True if written."""
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
        return True
    return False


def holder_script(paths: LabPaths, s: Site) -> str:
    sp = paths.site(s.name)
    binds = [(str(getattr(sp, attr)), target) for target, attr in LIBVIRT_DIRS.items()]
    binds += [(str(sp.passwd), "/etc/passwd"), (str(sp.group), "/etc/group"),
              (str(sp.srv), "/srv")]
    lines = [
        "set -e",
        f"hostname {s.name}",
        "mount -t tmpfs -o mode=755 pcteleport-run /run",
        "mkdir -p /run/libvirt /run/sshd /run/lock",
        f"mount --bind {sp.run_libvirt} /run/libvirt",
        *(f"mount --bind {src} {dst}" for src, dst in binds),
        f"echo $$ > {sp.holder_pid}",
        "exec sleep infinity",
    ]
    return "\n".join(lines) + "\n"


def ensure_holder(paths: LabPaths, s: Site) -> int:
    sp = paths.site(s.name)
    pid = shell.read_pid(sp.holder_pid)
    if pid is not None:
        return pid
    sp.holder_pid.unlink(missing_ok=True)
    cmd = shell.in_netns(s.netns, ["unshare", "--mount", "--uts", "--propagation", "private", "--",
                                   "/bin/sh", "-c", holder_script(paths, s)])
    proc = shell.spawn_detached(cmd, sp.holder_log)
    shell.wait_for(lambda: shell.read_pid(sp.holder_pid) or proc.poll() is not None, 10,
                   f"site {s.name}'s namespaces")
    pid = shell.read_pid(sp.holder_pid)
    if pid is None:
        raise PcteleportError(f"site {s.name} could not set up its mounts: see {sp.holder_log}")
    return pid


def stop_libvirtd(paths: LabPaths, s: Site) -> None:
    """Stop the site's libvirtd (its VMs keep running; the next one reconnects to them)."""
    sp = paths.site(s.name)
    pid = shell.read_pid(sp.libvirtd_pid)
    if pid is not None:
        shell.stop_pid(pid, timeout=60)
    sp.libvirtd_pid.unlink(missing_ok=True)


def ensure_libvirtd(paths: LabPaths, s: Site, holder: int) -> int:
    sp = paths.site(s.name)
    pid = shell.read_pid(sp.libvirtd_pid)
    if pid is not None and sp.libvirt_sock.exists():
        return pid
    sp.libvirtd_pid.unlink(missing_ok=True)
    shell.run(shell.in_site(holder, [LIBVIRTD, "--daemon", "--pid-file",
                                     "/run/libvirt/libvirtd.pid"]))
    shell.wait_for(lambda: sp.libvirt_sock.exists() and shell.read_pid(sp.libvirtd_pid), 30,
                   f"libvirtd at {s.name} (see {sp.log_libvirt / 'libvirtd.log'})")
    return shell.read_pid(sp.libvirtd_pid) or 0


def ensure_sshd(paths: LabPaths, s: Site, holder: int) -> int:
    sp = paths.site(s.name)
    pid = shell.read_pid(sp.sshd_pid)
    if pid is not None:
        return pid
    sp.sshd_pid.unlink(missing_ok=True)
    shell.run(shell.in_site(holder, [SSHD, "-f", str(sp.sshd_config), "-E", str(sp.sshd_log)]))
    shell.wait_for(lambda: shell.read_pid(sp.sshd_pid), 10,
                   f"sshd at {s.name} (see {sp.sshd_log})")
    return shell.read_pid(sp.sshd_pid) or 0


def site_pids(paths: LabPaths, s: Site) -> dict[str, int | None]:
    sp = paths.site(s.name)
    return {
        "holder": shell.read_pid(sp.holder_pid),
        "libvirtd": shell.read_pid(sp.libvirtd_pid),
        "sshd": shell.read_pid(sp.sshd_pid),
    }
