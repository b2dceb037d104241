#!/usr/bin/env bash
# The Debian guest image (root filesystem with python3, the agent and pcteleport.ko built for
# the guest kernel) and its stage-1 initramfs, built into the cache now so the lab and the
# tests start at once. Cached by input hash: a second run takes a fraction of a second.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
"$here/.venv/bin/python" - <<'PY'
import time

from pcteleport import guestimage

t0 = time.monotonic()
boot = guestimage.debian_boot()
guestimage.stage1_boot()
print(f"setup: guest image {boot.root_image.name} ready ({time.monotonic() - t0:.1f} s)")
PY
