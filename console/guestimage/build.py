"""Guest boot material built from Debian packages: kernel, stage-1 initramfs, root filesystem.

Everything lands in the cache (``$PCTELEPORT_CACHE``, default /var/cache/pcteleport), keyed by a
hash of its inputs, so a second build with the same inputs returns at once.

- ``guest_kernel()``: the Debian guest kernel unpacked by scripts/setup.d/10-guest-kernel.sh.
- ``build_initramfs(kernel, script=...)``: a busybox initramfs that loads the virtio and ext4
  modules, then runs ``script`` (stage-1 only guests, fast) or switch_roots into a root disk.
- ``build_rootfs(kernel)``: an ext4 image of a minimal Debian (python3.11, busybox, the guest
  agent, the pcteleport kernel module) whose PID 1 is guestinit.ROOT_INIT.
- ``stage1_boot(...)`` / ``debian_boot(...)``: a ``GuestBoot`` holding the kernel, initrd and
  command line for QEMU's ``-kernel/-initrd/-append`` or libvirt's ``<os>`` element.

Building needs root (chroot to precompile the guest's Python) and the host tools installed by
scripts/setup.sh (busybox-static, e2fsprogs, kmod, apt).
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import lzma
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from xml.sax.saxutils import escape

from pcteleport.errors import PcteleportError
from pcteleport.guestimage import guestinit

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST_BUSYBOX = Path("/bin/busybox")

# Modules the stage-1 needs, in the order asked for; dependencies come from modprobe.
# crc32c is only a soft dependency of ext4, so crc32c_generic is named explicitly.
STAGE1_MODULES = (
    "virtio_pci",
    "virtio_blk",
    "virtio_console",
    "crc32c_generic",
    "ext4",
)
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

BASE_CMDLINE = "console=ttyS0 panic=-1 loglevel=4 random.trust_cpu=on"
ROOT_SERIAL = "pctroot"


def cache_dir() -> Path:
    return Path(os.environ.get("PCTELEPORT_CACHE", "/var/cache/pcteleport"))


@dataclass(frozen=True)
class GuestKernel:
    version: str
    root: Path  # where the linux-image deb was unpacked
    vmlinuz: Path
    modules_dir: Path  # <root>/lib/modules/<version>
    headers_dir: Path  # /usr/src/linux-headers-<version>, to build kmodule/

    def module_closure(self, names: Iterable[str]) -> list[Path]:
        """The .ko files to insmod, dependencies first, each once, in a loadable order."""
        ordered: list[Path] = []
        for name in names:
            out = _run(
                ["modprobe", "-d", str(self.root), "-S", self.version, "--show-depends", name],
                what=f"resolve kernel module {name}",
            )
            for line in out.splitlines():
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "insmod":
                    path = Path(parts[1]).resolve()
                    if path not in ordered:
                        ordered.append(path)
        return ordered

    def vmlinux(self) -> Path:
        """The uncompressed ELF kernel (PVH entry): boots in about half the time of vmlinuz."""
        out = self.root / "boot" / f"vmlinux-{self.version}"
        if out.exists():
            return out
        elf = _extract_vmlinux(self.vmlinuz.read_bytes())
        if elf is None:
            raise PcteleportError(
                f"cannot find an xz-compressed ELF kernel inside {self.vmlinuz}: "
                "boot with the vmlinuz (pvh=False) instead"
            )
        _write_atomic(out, elf)
        return out


def guest_kernel() -> GuestKernel:
    """The guest kernel that scripts/setup.sh unpacked; a clear error if it has not run."""
    pointer = cache_dir() / "kernel" / "current"
    hint = "run scripts/setup.sh (as root) to unpack the Debian guest kernel"
    if not pointer.exists():
        raise PcteleportError(f"no guest kernel in {pointer.parent}: {hint}")
    version = pointer.read_text().strip()
    root = pointer.parent / version
    kernel = GuestKernel(
        version=version,
        root=root,
        vmlinuz=root / "boot" / f"vmlinuz-{version}",
        modules_dir=root / "lib" / "modules" / version,
        headers_dir=Path("/usr/src") / f"linux-headers-{version}",
    )
    for what, path in (
        ("kernel image", kernel.vmlinuz),
        ("module tree", kernel.modules_dir / "modules.dep"),
        ("unpack stamp", root / ".complete"),
    ):
        if not path.exists():
            raise PcteleportError(f"guest kernel {version}: {what} {path} is missing: {hint}")
    return kernel


@dataclass(frozen=True)
class GuestBoot:
    """What a hypervisor needs for direct kernel boot of one guest."""

    kernel: Path
    initrd: Path
    cmdline: str
    root_image: Path | None = None  # attach as a virtio disk with serial=root_serial
    root_serial: str = ROOT_SERIAL
    version: str = ""

    def qemu_args(self) -> list[str]:
        return ["-kernel", str(self.kernel), "-initrd", str(self.initrd), "-append", self.cmdline]

    def libvirt_os_xml(self, arch: str = "x86_64", machine: str = "pc") -> str:
        """An ``<os>`` element for a libvirt domain (type='qemu') booting this guest."""
        return (
            "<os>\n"
            f"  <type arch='{arch}' machine='{machine}'>hvm</type>\n"
            f"  <kernel>{escape(str(self.kernel))}</kernel>\n"
            f"  <initrd>{escape(str(self.initrd))}</initrd>\n"
            f"  <cmdline>{escape(self.cmdline)}</cmdline>\n"
            "</os>"
        )

    def with_args(self, *args: str) -> GuestBoot:
        """The same boot with more kernel command-line arguments (pct.halt=1, pct.rootrw=1...)."""
        return GuestBoot(
            self.kernel,
            self.initrd,
            " ".join([self.cmdline, *args]),
            self.root_image,
            self.root_serial,
            self.version,
        )


# --- stage-1 initramfs -----------------------------------------------------------------------


def build_initramfs(
    kernel: GuestKernel,
    *,
    script: str | None = None,
    modules: Iterable[str] = STAGE1_MODULES,
    extra_files: Mapping[str, bytes] | None = None,
) -> Path:
    """A busybox initramfs (newc cpio, uncompressed: faster to boot under TCG than gzip).

    With ``script``, /scenario runs it after the modules are loaded (no root disk needed).
    Without it, the initramfs mounts the disk named by ``pct.root=`` and switch_roots.
    ``extra_files`` maps absolute guest paths to contents (made executable if they start "#!").
    """
    kos = kernel.module_closure(modules)
    files: dict[str, bytes] = {
        "/init": guestinit.STAGE1_INIT.encode(),
        "/lib/pcteleport/functions.sh": guestinit.FUNCTIONS.encode(),
        "/modules/order": "".join(f"{ko.name}\n" for ko in kos).encode(),
    }
    if script is not None:
        files["/scenario"] = script.encode()
    files.update(extra_files or {})
    key = _key(
        "initramfs-v1",
        kernel.version,
        HOST_BUSYBOX.read_bytes(),
        *(f"{k}\0".encode() + v for k, v in sorted(files.items())),
        *(str(ko).encode() for ko in kos),
    )
    out = cache_dir() / "initramfs" / f"{key}.cpio"
    if out.exists():
        return out
    archive = _Cpio()
    for d in ("/bin", "/dev", "/lib", "/lib/pcteleport", "/modules", "/proc", "/sys", "/tmp"):
        archive.directory(d)
    archive.char_device("/dev/console", 5, 1)
    archive.file("/bin/busybox", HOST_BUSYBOX.read_bytes(), 0o755)
    archive.symlink("/bin/sh", "busybox")
    for ko in kos:
        archive.file(f"/modules/{ko.name}", _read_module(ko), 0o644)
    for path, data in sorted(files.items()):
        for parent in reversed(Path(path).parents[:-1]):
            archive.directory(str(parent))
        archive.file(path, data, 0o755 if data.startswith(b"#!") or path == "/init" else 0o644)
    _write_atomic(out, archive.finish())
    return out


def stage1_boot(
    script: str | None = None,
    *,
    kernel: GuestKernel | None = None,
    modules: Iterable[str] = STAGE1_MODULES,
    extra_files: Mapping[str, bytes] | None = None,
    pvh: bool = True,
) -> GuestBoot:
    """A busybox-only guest: fast to boot, no Python. ``script`` runs once modules are loaded."""
    kernel = kernel or guest_kernel()
    initrd = build_initramfs(kernel, script=script, modules=modules, extra_files=extra_files)
    image = kernel.vmlinux() if pvh else kernel.vmlinuz
    return GuestBoot(image, initrd, BASE_CMDLINE, version=kernel.version)


# --- Debian root filesystem ------------------------------------------------------------------


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


def debian_boot(
    spec: RootfsSpec | None = None,
    *,
    kernel: GuestKernel | None = None,
    pvh: bool = True,
) -> GuestBoot:
    """A Debian guest: stage-1 initramfs + root image (attach it with serial=pctroot)."""
    kernel = kernel or guest_kernel()
    rootfs = build_rootfs(kernel, spec)
    initrd = build_initramfs(kernel)
    image = kernel.vmlinux() if pvh else kernel.vmlinuz
    cmdline = f"{BASE_CMDLINE} pct.root=serial:{ROOT_SERIAL}"
    return GuestBoot(image, initrd, cmdline, rootfs, ROOT_SERIAL, kernel.version)


def build_kmodule(kernel: GuestKernel, source: Path = REPO_ROOT / "kmodule") -> Path | None:
    """pcteleport.ko built for the guest kernel, in the cache (the checkout stays clean)."""
    sources = sorted(
        p for p in source.glob("*") if p.is_file() and (p.suffix in (".c", ".h") or p.name in (
            "Kbuild", "Makefile"))
    )
    if not any(p.suffix == ".c" for p in sources):
        return None
    if not kernel.headers_dir.exists():
        raise PcteleportError(
            f"no headers for guest kernel {kernel.version} in {kernel.headers_dir}: "
            "run scripts/setup.sh"
        )
    key = _key("kmodule-v1", kernel.version, *(p.name.encode() + p.read_bytes() for p in sources))
    ko = cache_dir() / "kmodule" / f"pcteleport-{kernel.version}-{key}.ko"
    if ko.exists():
        return ko
    ko.parent.mkdir(parents=True, exist_ok=True)
    # A private build directory: the lab and tests may build at the same time.
    with tempfile.TemporaryDirectory(dir=ko.parent, prefix=".build-") as tmp:
        build = Path(tmp)
        for p in sources:
            shutil.copy2(p, build / p.name)
        _run(
            ["make", "-s", "-C", str(kernel.headers_dir), f"M={build}", "modules"],
            what=f"build kmodule/ for guest kernel {kernel.version}",
        )
        built = build / "pcteleport.ko"
        if not built.exists():
            raise PcteleportError(f"building kmodule/ made no pcteleport.ko in {build}")
        os.replace(built, ko)
    return ko


# --- internals -------------------------------------------------------------------------------


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


def _extract_vmlinux(bzimage: bytes) -> bytes | None:
    """Find the xz stream in a bzImage and decompress it; the result must be an ELF file."""
    magic = b"\xfd7zXZ\x00"
    start = bzimage.find(magic)
    while start != -1:
        try:
            data = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(bzimage[start:])
        except lzma.LZMAError:
            data = b""
        if data.startswith(b"\x7fELF"):
            return data
        start = bzimage.find(magic, start + 1)
    return None


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    return data


def _tree_mib(root: Path) -> int:
    total = 0
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            p = os.path.join(dirpath, n)
            if not os.path.islink(p):
                total += (os.path.getsize(p) + 4095) // 4096 * 4096
        total += 4096 * (len(names) // 16 + 1)
    return total // (1 << 20) + 1


def _key(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()[:20]


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _run(cmd: list[str], *, what: str, cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    except FileNotFoundError as exc:
        raise PcteleportError(f"cannot {what}: {exc.filename} is not installed "
                              "(run scripts/setup.sh)") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise PcteleportError(f"cannot {what}: {' / '.join(tail) or f'exit {proc.returncode}'}")
    return proc.stdout


class _Cpio:
    """A newc ("070701") cpio archive, as the kernel unpacks for an initramfs."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._ino = 1
        self._dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)):
        name_b = name.lstrip("/").encode() + b"\0"
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_b), 0)
        self._ino += 1
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._chunks.append(_pad4(header + name_b))
        self._chunks.append(_pad4(data))

    def directory(self, name: str) -> None:
        if name not in self._dirs and name != "/":
            self._dirs.add(name)
            self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, perm: int) -> None:
        self._entry(name, 0o100000 | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def char_device(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o020600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return b"".join(self._chunks)


def _pad4(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)
