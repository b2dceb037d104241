"""The guest's root filesystem: Debian packages (apt closure), unpacked, populated, made ext4."""

from __future__ import annotations

import importlib.resources
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pcteleport.errors import PcteleportError
from pcteleport.guestimage import guestinit
from pcteleport.guestimage.cache import _key, _run, _write_atomic, cache_dir
from pcteleport.guestimage.kernel import GuestKernel, _read_module, build_kmodule

# Extra filesystems a guest may mount (the second filesystem type of the tests, vfat media).
# btrfs is there so a guest can mount it, and the agent can say the map does not cover it.
EXTRA_FS_MODULES = ("xfs", "vfat", "nls_cp437", "nls_ascii", "nls_utf8", "btrfs")

# Roots of the Debian package closure for the guest root filesystem.
ROOTFS_PACKAGES = (
    "busybox-static",
    "python3-minimal",
    "python3.11-minimal",
    "libpython3.11-stdlib",
    "e2fsprogs",
)
# Pulled in by dependencies but only needed to *install* packages (we unpack instead).
ROOTFS_EXCLUDED = frozenset(
    {
        "dpkg",
        "tar",
        "install-info",
        "perl",
        "perl-base",
        "perl-modules-5.36",
        "libperl5.36",
        "mailcap",
        "mime-support",
        "debconf",
        "logsave",
        "init-system-helpers",
        "usrmerge",
        "libgdbm-compat4",
    }
)

ROOT_SERIAL = "pctroot"  # the root image's ext4 label and its virtio disk serial


@dataclass
class RootfsSpec:
    """Inputs of a root filesystem image; each one is part of the cache key."""

    packages: tuple[str, ...] = ROOTFS_PACKAGES
    extra_packages: tuple[str, ...] = ()
    extra_modules: tuple[str, ...] = EXTRA_FS_MODULES
    files: dict[str, bytes] = field(default_factory=dict)  # guest path -> contents
    with_kmodule: bool = True
    with_agent: bool = True
    free_mib: int = 64  # room left in the image beyond its contents


def build_rootfs(kernel: GuestKernel, spec: RootfsSpec | None = None) -> Path:
    """An ext4 image of a minimal Debian, built by unpacking packages (no maintainer scripts)."""
    spec = spec or RootfsSpec()
    versions = _package_closure((*spec.packages, *spec.extra_packages))
    ko = build_kmodule(kernel) if spec.with_kmodule else None
    agent = importlib.resources.files("pcteleport.guest") / "agent.py"
    agent_src = agent.read_bytes() if spec.with_agent else None
    extra_kos = kernel.module_closure(spec.extra_modules) if spec.extra_modules else []
    key = _key(
        "rootfs-v3",
        kernel.version,
        *(f"{p}={v}".encode() for p, v in sorted(versions.items())),
        ko.read_bytes() if ko else b"-",
        agent_src or b"-",
        guestinit.ROOT_INIT.encode(),
        guestinit.FUNCTIONS.encode(),
        *(f"{k}\0".encode() + v for k, v in sorted(spec.files.items())),
        *(str(p).encode() for p in extra_kos),
        str(spec.free_mib).encode(),
    )
    out = cache_dir() / "rootfs" / f"{key}.ext4"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".build-") as tmp:
        debs, root = Path(tmp) / "debs", Path(tmp) / "root"
        debs.mkdir()
        root.mkdir()
        _run(
            ["apt-get", "-qq", "-o", "APT::Sandbox::User=root", "download",
             *(f"{p}={v}" for p, v in sorted(versions.items()))],
            what="download the guest's Debian packages",
            cwd=debs,
        )
        for deb in sorted(debs.glob("*.deb")):
            _run(["dpkg-deb", "-x", str(deb), str(root)], what=f"unpack {deb.name}")
        _populate_root(root, kernel, ko, agent_src, extra_kos, spec.files)
        _precompile_python(root)
        size_mib = _tree_mib(root) * 5 // 4 + spec.free_mib
        tmp_img = Path(tmp) / "root.ext4"
        _run(
            ["mkfs.ext4", "-q", "-F", "-b", "4096", "-L", ROOT_SERIAL, "-m", "0", "-d", str(root),
             str(tmp_img), f"{size_mib}M"],
            what="make the guest root filesystem",
        )
        os.replace(tmp_img, out)
    return out


def _populate_root(
    root: Path,
    kernel: GuestKernel,
    ko: Path | None,
    agent_src: bytes | None,
    extra_kos: list[Path],
    files: Mapping[str, bytes],
) -> None:
    for d in ("dev", "proc", "sys", "run", "tmp", "root", "mnt", "media", "var/log", "var/tmp",
              "data", "etc/pcteleport", "lib/pcteleport", "usr/lib/pcteleport"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "tmp").chmod(0o1777)
    (root / "var/tmp").chmod(0o1777)
    _busybox_links(root)
    etc = root / "etc"
    (etc / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\n"
        "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
    )
    (etc / "group").write_text("root:x:0:\ndaemon:x:1:\ntty:x:5:\ndisk:x:6:\nnogroup:x:65534:\n")
    (etc / "shadow").write_text("root:*:19000:0:99999:7:::\n")
    (etc / "shadow").chmod(0o640)
    (etc / "shells").write_text("/bin/sh\n")
    (etc / "hostname").write_text("guest\n")
    (etc / "hosts").write_text("127.0.0.1 localhost guest\n::1 localhost\n")
    (etc / "fstab").write_text("# mounts are made by /sbin/pcteleport-init\n")
    init = root / "sbin" / "pcteleport-init"
    init.write_text(guestinit.ROOT_INIT)
    init.chmod(0o755)
    (root / "lib/pcteleport/functions.sh").write_text(guestinit.FUNCTIONS)
    moddir = root / "lib" / "modules" / kernel.version
    (moddir / "extra").mkdir(parents=True, exist_ok=True)
    if ko is not None:
        shutil.copy2(ko, moddir / "extra" / "pcteleport.ko")
    # Extra filesystems are loaded on demand (mount -t xfs -> kernel -> /sbin/modprobe), not
    # at boot: btrfs alone is 4.5 MB to insmod under TCG.
    for p in extra_kos:
        rel = p.relative_to(kernel.modules_dir.resolve()).with_suffix(".ko")
        (moddir / rel).parent.mkdir(parents=True, exist_ok=True)
        (moddir / rel).write_bytes(_read_module(p))
    for meta in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        if (kernel.modules_dir / meta).exists():
            shutil.copy2(kernel.modules_dir / meta, moddir / meta)
    _run(["depmod", "-b", str(root), kernel.version], what="index the guest's kernel modules")
    if agent_src is not None:
        (root / "usr/lib/pcteleport/agent.py").write_bytes(agent_src)
    for path, data in files.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(0o755 if data.startswith(b"#!") else 0o644)


def _busybox_links(root: Path) -> None:
    """Busybox applet links wherever a package did not ship the real tool."""
    busybox = root / "bin" / "busybox"
    listing = _run([str(busybox), "--list-full"], what="list busybox applets")
    for rel in listing.split():
        link = root / rel
        if link.exists() or link.is_symlink():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(busybox, link.parent))


def _precompile_python(root: Path) -> None:
    """Bytecode made by the guest's own python, or every boot of a read-only root recompiles."""
    pythons = sorted((root / "usr" / "bin").glob("python3.[0-9]*"))
    pythons = [p for p in pythons if p.name.replace("python", "").replace(".", "").isdigit()]
    if not pythons:
        return
    py = "/usr/bin/" + pythons[-1].name
    lib = "/usr/lib/" + pythons[-1].name
    _run(
        ["chroot", str(root), py, "-m", "compileall", "-q", lib,
         "/usr/lib/pcteleport"],
        what="precompile the guest's Python",
    )


def _package_closure(roots: Iterable[str]) -> dict[str, str]:
    """Package -> candidate version: ``roots`` and their (Pre-)Depends, minus installers.

    Remembered per state of apt's package lists: asking apt takes ~1.5 s, and every guest
    build (and so every test that boots a Debian guest) starts by asking."""
    roots = sorted(roots)
    lists = Path("/var/lib/apt/lists")
    files = [p for p in lists.glob("*") if p.is_file()] if lists.is_dir() else []
    state = sorted(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    memo = cache_dir() / "rootfs" / f"closure-{_key('closure-v1', *roots, *state)}.json"
    if memo.exists():
        return json.loads(memo.read_text())
    versions = _ask_apt_closure(roots)
    _write_atomic(memo, json.dumps(versions, indent=1).encode())
    return versions


def _ask_apt_closure(roots: list[str]) -> dict[str, str]:
    out = _run(
        ["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
         "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", *roots],
        what="resolve the guest's Debian packages",
    )
    names = sorted(
        {
            line.strip()
            for line in out.splitlines()
            if line and not line.startswith(" ") and "<" not in line
        }
        - ROOTFS_EXCLUDED
    )
    shown = _run(
        ["apt-cache", "show", "--no-all-versions", *names], what="read package versions"
    )
    versions: dict[str, str] = {}
    pkg = None
    for line in shown.splitlines():
        if line.startswith("Package: "):
            pkg = line.split(": ", 1)[1]
        elif line.startswith("Version: ") and pkg:
            versions[pkg] = line.split(": ", 1)[1]
    missing = set(names) - set(versions)
    if missing:
        raise PcteleportError(
            f"apt has no candidate for {', '.join(sorted(missing))}: run apt-get update"
        )
    return versions


def _tree_mib(root: Path) -> int:
    total = 0
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            if not os.path.islink(p):
                total += (os.path.getsize(p) + 4095) // 4096 * 4096
        total += 4096 * (len(names) // 16 + 1)
    return total // (1 << 20) + 1
