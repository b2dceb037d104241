"""The Debian guest kernel (vmlinux, module files) and our kernel module built for it."""

from __future__ import annotations

import lzma
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pcteleport.errors import PcteleportError
from pcteleport.guestimage.cache import _key, _run, _write_atomic, cache_dir

REPO_ROOT = Path(__file__).resolve().parents[2]


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
