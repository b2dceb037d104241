"""The stage-1 initramfs: host busybox, the boot modules and guestinit's stage-1 script."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from pcteleport.guestimage import guestinit
from pcteleport.guestimage.cache import _key, _write_atomic, cache_dir
from pcteleport.guestimage.cpio import _Cpio
from pcteleport.guestimage.kernel import GuestKernel, _read_module

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
