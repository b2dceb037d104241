"""Lab VM disks as operators have them: every disk (root and data) a writable qcow2 overlay on a
raw base image from the site's image cache.

- Base images live in each site's image cache, `/srv/images/` inside a site host
  (`<state>/<site>/srv/images` from the operator's namespace): the same path and the same bytes
  at every site, each with its checksum beside it (`<image>.sha256`, see imagecache.py), read
  only. The root base is the guest image (`pct-root-<key>.raw`); a scenario's data base is its
  ext4 data image (`<vm>-data-<key>.raw`), built once per contents into the guest cache.
- A VM's overlays live beside its console log at the site it runs at,
  `/srv/vms/<vm>/<target>.qcow2` (`qemu-img create -f qcow2 -b BASE -F raw`, the base's virtual
  size). A migration copies the overlays' data with libvirt's storage migration and creates the
  destination's overlay first, as Nova does; the bases never move.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pcteleport import imagecache
from pcteleport.guestimage import GuestBoot
from pcteleport.lab import datafill, scenarios, shell
from pcteleport.lab.paths import GUEST_CACHE, SITE_IMAGE_DIR, SITE_VM_DIR, LabPaths
from pcteleport.lab.scenarios import VmSpec
from pcteleport.lab.topology import Site, sites

DATA_SERIAL = "pctdata"
FILL_VERSION = "v2"  # v2: 4 KiB blocks
WARM_PATH = ".pcteleport/warm"
ROOT_TARGET, DATA_TARGET = "vda", "vdb"


@dataclass(frozen=True)
class LabDisk:
    """One disk of a lab VM, by the paths a site host sees (the same at every site)."""

    target: str  # vda, vdb
    serial: str
    base: Path  # the raw base in the image cache
    overlay: Path  # the VM's writable qcow2 layer on it
    source: Path  # the base's bytes on the operator's host (the build cache)

    @property
    def base_name(self) -> str:
        return self.base.name


def base_path(name: str) -> Path:
    return SITE_IMAGE_DIR / name


def overlay_path(vm: str, target: str) -> Path:
    return SITE_VM_DIR / vm / f"{target}.qcow2"


def _image_key(spec: VmSpec) -> str:
    h = hashlib.sha256(
        f"{FILL_VERSION}|{spec.fill}|{spec.fill_mib}|{spec.data_size_mib}|{spec.warm_command}"
        .encode()
    )
    for name in spec.warm_programs:  # (none: the key it always had, no image rebuilt)
        h.update(name.encode() + b"\0" + (scenarios.GUEST_PROGRAMS / name).read_bytes())
    return h.hexdigest()[:16]


def root_base_name(boot: GuestBoot) -> str:
    if boot.root_image is None:
        raise ValueError("the lab boots guests from a root image (guestimage.debian_boot)")
    return f"pct-root-{boot.root_image.stem}.raw"


def data_base_name(spec: VmSpec) -> str:
    return f"{spec.name}-data-{_image_key(spec)}.raw"


def data_image_cache(spec: VmSpec) -> Path:
    return GUEST_CACHE / "lab-data" / f"{spec.name}-{_image_key(spec)}.raw"


def vm_disks(spec: VmSpec, boot: GuestBoot) -> list[LabDisk]:
    """The VM's root and data disks (without building anything)."""
    assert boot.root_image is not None
    return [
        LabDisk(ROOT_TARGET, boot.root_serial, base_path(root_base_name(boot)),
                overlay_path(spec.name, ROOT_TARGET), boot.root_image),
        LabDisk(DATA_TARGET, DATA_SERIAL, base_path(data_base_name(spec)),
                overlay_path(spec.name, DATA_TARGET), data_image_cache(spec)),
    ]


def build_data_image(spec: VmSpec) -> Path:
    """The scenario's ext4 data image in the cache (built once per contents)."""
    out = data_image_cache(spec)
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".build-") as tmp:
        tree = Path(tmp) / "tree"
        tree.mkdir()
        if spec.fill == "html":
            datafill.fill_html(tree, spec.fill_mib)
        elif spec.fill == "sqlite":
            datafill.fill_sqlite(tree, spec.fill_mib)
        warm = tree / WARM_PATH
        warm.parent.mkdir(parents=True)
        warm.write_text(f"#!/bin/sh\n{spec.warm_command}\n")
        warm.chmod(0o755)
        for name in spec.warm_programs:
            shutil.copyfile(scenarios.GUEST_PROGRAMS / name, warm.parent / name)
        img = Path(tmp) / "data.raw"
        # 4 KiB blocks, as on any real data disk: mkfs picks 1 KiB for small filesystems, and
        # then most page-cache pages span blocks that are not contiguous on the disk.
        shell.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-m", "0", "-L", DATA_SERIAL, "-E",
                   "root_owner=0:0", "-d", str(tree), str(img), f"{spec.data_size_mib}M"],
                  timeout=600)
        os.replace(img, out)
    return out


def cached_digest(image: Path) -> str:
    """The SHA-256 of a build-cache image, computed once (its checksum file beside it)."""
    return imagecache.info(image).sha256


def ensure_bases(paths: LabPaths, spec: VmSpec, boot: GuestBoot) -> list[LabDisk]:
    """The VM's base images in every site's image cache (copied once, with checksums)."""
    build_data_image(spec)
    disks = vm_disks(spec, boot)
    for d in disks:
        digest = cached_digest(d.source)
        for s in sites():
            imagecache.place(d.source, paths.site(s.name).host_path(d.base), digest)
    return disks


def create_overlays(paths: LabPaths, s: Site, holder: int, disks: list[LabDisk]) -> None:
    """Fresh overlays of the VM's disks at site `s`, made by the site host's own qemu-img (so
    the overlay names its base by the path the site sees)."""
    for d in disks:
        host = paths.site(s.name).host_path(d.overlay)
        host.parent.mkdir(parents=True, exist_ok=True)
        host.unlink(missing_ok=True)
        shell.run(shell.in_site(holder, ["qemu-img", "create", "-q", "-f", "qcow2", "-b",
                                         str(d.base), "-F", "raw", str(d.overlay)]))


def base_digest(paths: LabPaths, site: str, name: str) -> str:
    """SHA-256 of a site's copy of a base image, read from its bytes."""
    return imagecache.sha256_file(paths.site(site).host_path(base_path(name)))
