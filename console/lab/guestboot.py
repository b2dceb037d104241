"""The lab's guest: the Debian guest image from pcteleport.guestimage, its root filesystem
mounted read-write (its disk is a writable overlay, see disks.py), plus a scenario hook that
mounts the data disk read-write at /data and warms the page cache with the scenario's command
(the data image carries it as /data/.pcteleport/warm)."""

from __future__ import annotations

from pcteleport import guestimage
from pcteleport.guestimage import guestinit
from pcteleport.lab.disks import DATA_SERIAL, WARM_PATH

AGENT_PORT = guestinit.AGENT_PORT
SHELL_PORT = guestinit.SHELL_PORT
READY_MARKER = guestinit.MARKERS["ready"]
DATA_MARKER = "PCTELEPORT-LAB-DATA"

HOOK_PATH = "/etc/pcteleport/lab-scenario"
HOOK = f"""#!/bin/sh
# pcteleport lab: mount the scenario's data disk (writable), then warm the page cache.
. /lib/pcteleport/functions.sh
dev=$(pct_wait_disk serial:{DATA_SERIAL})
if [ -z "$dev" ]; then
	echo "{DATA_MARKER} absent"
	exit 0
fi
if mount -t ext4 -o rw "$dev" /data; then
	echo "{DATA_MARKER} mounted $dev"
else
	echo "{DATA_MARKER} failed $dev"
	exit 1
fi
[ -x /data/{WARM_PATH} ] && /data/{WARM_PATH}
echo "{DATA_MARKER} warm"
"""


def lab_boot() -> guestimage.GuestBoot:
    """Kernel, initrd, root image and command line of every lab guest (built once, cached)."""
    spec = guestimage.RootfsSpec(files={HOOK_PATH: HOOK.encode()})
    return guestimage.debian_boot(spec).with_args(f"pct.scenario={HOOK_PATH}", "pct.rootrw=1")
