"""The guest image: a Debian kernel, an initramfs, a root filesystem with our kernel module and
agent, built from Debian packages into a cache. Used by the lab and the guest tests, never by a
migration.

Everything lands in the cache (``$PCTELEPORT_CACHE``, default /var/cache/pcteleport), keyed by a
hash of its inputs, so a second build with the same inputs returns at once.

- ``guest_kernel()``: the Debian guest kernel unpacked by scripts/setup.d/10-guest-kernel.sh
  (kernel.py, with ``build_kmodule``).
- ``build_initramfs(kernel, script=...)``: a busybox initramfs that loads the virtio and ext4
  modules, then runs ``script`` (stage-1 only guests, fast) or switch_roots into a root disk
  (initramfs.py, written by cpio.py).
- ``build_rootfs(kernel)``: an ext4 image of a minimal Debian (python3.11, busybox, the guest
  agent, the pcteleport kernel module) whose PID 1 is guestinit.ROOT_INIT (rootfs.py).
- ``stage1_boot(...)`` / ``debian_boot(...)``: a ``GuestBoot`` holding the kernel, initrd and
  command line for QEMU's ``-kernel/-initrd/-append`` or libvirt's ``<os>`` element (boot.py).
- cache.py: the cache's folder, keys, atomic writes and the host-tool runner.

Building needs root (chroot to precompile the guest's Python) and the host tools installed by
scripts/setup.sh (busybox-static, e2fsprogs, kmod, apt).
"""

from pcteleport.guestimage.boot import GuestBoot, debian_boot, stage1_boot
from pcteleport.guestimage.cache import cache_dir
from pcteleport.guestimage.initramfs import build_initramfs
from pcteleport.guestimage.kernel import GuestKernel, build_kmodule, guest_kernel
from pcteleport.guestimage.rootfs import RootfsSpec, build_rootfs

__all__ = ["GuestBoot", "GuestKernel", "RootfsSpec", "build_initramfs", "build_kmodule",
           "build_rootfs", "cache_dir", "debian_boot", "guest_kernel", "stage1_boot"]
