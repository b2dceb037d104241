"""The guest image: a Debian kernel, an initramfs, a root filesystem with our kernel module and
agent, built from Debian packages into a cache. Used by the lab and the guest tests, never by a
migration."""

from pcteleport.guestimage.build import (
    GuestBoot,
    GuestKernel,
    RootfsSpec,
    build_initramfs,
    build_kmodule,
    build_rootfs,
    cache_dir,
    debian_boot,
    guest_kernel,
    stage1_boot,
)

__all__ = ["GuestBoot", "GuestKernel", "RootfsSpec", "build_initramfs", "build_kmodule",
           "build_rootfs", "cache_dir", "debian_boot", "guest_kernel", "stage1_boot"]
