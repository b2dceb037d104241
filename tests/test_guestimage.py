"""Guest boot material: the kernel pointer, the stage-1 initramfs, the root image cache, the
libvirt <os> element and the kernel module's own Makefile."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import require
from qemu_guest import QemuGuest

from pcteleport import guestimage
from pcteleport.errors import PcteleportError

ROOT = Path(__file__).resolve().parent.parent


def _kernel() -> guestimage.GuestKernel:
    try:
        return guestimage.guest_kernel()
    except PcteleportError as exc:
        require(False, str(exc))
        raise


def test_missing_guest_kernel_says_to_run_setup(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PCTELEPORT_CACHE", str(tmp_path))
    with pytest.raises(PcteleportError, match=r"run scripts/setup.sh"):
        guestimage.guest_kernel()
    (tmp_path / "kernel").mkdir()
    (tmp_path / "kernel" / "current").write_text("6.1.0-99-amd64\n")
    with pytest.raises(PcteleportError, match=r"6.1.0-99-amd64: kernel image .* is missing"):
        guestimage.guest_kernel()


def test_initramfs_is_cached_and_loads_modules_in_dependency_order() -> None:
    require(shutil.which("cpio") is not None, "cpio is not installed")
    kernel = _kernel()
    script = f"#!/bin/sh\necho unique-{time.time_ns()}\n"  # a fresh cache key
    first = guestimage.build_initramfs(kernel, script=script)
    t0 = time.monotonic()
    again = guestimage.build_initramfs(kernel, script=script)
    assert again == first and time.monotonic() - t0 < 0.5
    listing = subprocess.run(["cpio", "-t", "--quiet"], stdin=open(first, "rb"),  # noqa: SIM115
                             capture_output=True, text=True, check=True).stdout.split()
    assert {"init", "scenario", "bin/busybox", "dev/console", "modules/order"} <= set(listing)
    order = subprocess.run(["cpio", "-i", "--to-stdout", "--quiet", "modules/order"],
                           stdin=open(first, "rb"),  # noqa: SIM115
                           capture_output=True, text=True, check=True).stdout.split()
    for before, after in (("virtio.ko", "virtio_blk.ko"), ("virtio_ring.ko", "virtio_pci.ko"),
                          ("jbd2.ko", "ext4.ko"), ("crc16.ko", "ext4.ko"),
                          ("crc32c_generic.ko", "ext4.ko"), ("virtio.ko", "virtio_console.ko")):
        assert order.index(before) < order.index(after), order
    assert f"modules/{order[0]}" in listing


def test_boot_spec_for_libvirt_and_qemu() -> None:
    boot = guestimage.GuestBoot(Path("/k/vmlinux"), Path("/k/initrd.cpio"),
                                "console=ttyS0 pct.root=serial:pctroot", Path("/k/root.ext4"))
    os_el = ET.fromstring(boot.with_args("pct.halt=1").libvirt_os_xml())
    assert os_el.findtext("kernel") == "/k/vmlinux"
    assert os_el.findtext("initrd") == "/k/initrd.cpio"
    assert os_el.findtext("cmdline") == "console=ttyS0 pct.root=serial:pctroot pct.halt=1"
    assert os_el.find("type").text == "hvm"
    assert boot.qemu_args() == ["-kernel", "/k/vmlinux", "-initrd", "/k/initrd.cpio",
                                "-append", "console=ttyS0 pct.root=serial:pctroot"]


def test_vmlinux_is_the_uncompressed_elf_kernel() -> None:
    kernel = _kernel()
    with open(kernel.vmlinux(), "rb") as f:
        assert f.read(4) == b"\x7fELF"


def test_kmodule_builds_with_its_own_makefile(tmp_path: Path) -> None:
    kernel = _kernel()
    require(kernel.headers_dir.exists(), f"{kernel.headers_dir} missing (scripts/setup.sh)")
    src = tmp_path / "kmodule"
    src.mkdir()
    for name in ("pcteleport.c", "Kbuild", "Makefile"):
        shutil.copy(ROOT / "kmodule" / name, src / name)
    out = subprocess.run(["make", "-C", str(src), f"KDIR={kernel.headers_dir}"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "warning:" not in out.stdout + out.stderr, out.stderr
    ko = src / "pcteleport.ko"
    info = {k: subprocess.run(["modinfo", "-F", k, str(ko)], capture_output=True, text=True,
                              check=True).stdout.strip() for k in ("license", "vermagic")}
    assert info["license"] == "GPL"
    assert info["vermagic"].split()[0] == kernel.version


def test_rootfs_build_is_cached() -> None:
    require(os.geteuid() == 0, "building the root filesystem needs root (chroot)")
    kernel = _kernel()
    first = guestimage.build_rootfs(kernel)
    t0 = time.monotonic()
    assert guestimage.build_rootfs(kernel) == first
    assert time.monotonic() - t0 < 2.0  # resolving package versions with apt-cache only


@pytest.mark.qemu
def test_missing_root_disk_is_a_clear_failure_marker(tmp_path: Path) -> None:
    require(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86_64 is not installed")
    require(os.geteuid() == 0, "needs root")
    boot = dataclasses.replace(guestimage.debian_boot(kernel=_kernel()), root_image=None)
    with QemuGuest(boot, tmp_path, shell=False, timeout_s=120) as g:
        line = g.wait_for("PCTELEPORT-FAILED", timeout=60)
    assert "root disk serial:pctroot not found" in line
