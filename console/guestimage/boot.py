"""What a hypervisor boots: GuestBoot, and the stage-1-only and Debian guests' boot material."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from pcteleport.guestimage.initramfs import STAGE1_MODULES, build_initramfs
from pcteleport.guestimage.kernel import GuestKernel, guest_kernel
from pcteleport.guestimage.rootfs import ROOT_SERIAL, RootfsSpec, build_rootfs

BASE_CMDLINE = "console=ttyS0 panic=-1 loglevel=4 random.trust_cpu=on"


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
