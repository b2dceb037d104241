"""Scenario data disks: one ext4 image per scenario, built once into the cache, then copied as
an identical replica into each site's replica dir (`/srv/replicas/<vm>-data.raw` in the site).

Consistency rule: the lab attaches every replica (and the guest root image) **read-only**, so no
migration can leave the destination's disk different from the source's — neither side can write.
`replica_digest()` lets tests and the console check that both replicas still match."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from pcteleport.lab import datafill, shell
from pcteleport.lab.paths import GUEST_CACHE, SITE_REPLICA_DIR, LabPaths
from pcteleport.lab.scenarios import VmSpec
from pcteleport.lab.topology import sites

DATA_SERIAL = "pctdata"
FILL_VERSION = "v2"  # v2: 4 KiB blocks
WARM_PATH = ".pcteleport/warm"


def replica_path(vm: str) -> Path:
    """The data disk replica as a site host sees it (same path at every site)."""
    return SITE_REPLICA_DIR / f"{vm}-data.raw"


def _image_key(spec: VmSpec) -> str:
    h = hashlib.sha256(
        f"{FILL_VERSION}|{spec.fill}|{spec.fill_mib}|{spec.data_size_mib}|{spec.warm_command}"
        .encode()
    )
    return h.hexdigest()[:16]


def build_data_image(spec: VmSpec) -> Path:
    """The scenario's ext4 data image in the cache (built once per contents)."""
    out = GUEST_CACHE / "lab-data" / f"{spec.name}-{_image_key(spec)}.raw"
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
        img = Path(tmp) / "data.raw"
        # 4 KiB blocks, as on any real data disk: mkfs picks 1 KiB for small filesystems, and
        # then most page-cache pages span blocks that are not contiguous on the disk.
        shell.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-m", "0", "-L", DATA_SERIAL, "-E",
                   "root_owner=0:0", "-d", str(tree), str(img), f"{spec.data_size_mib}M"],
                  timeout=600)
        os.replace(img, out)
    return out


def ensure_replicas(paths: LabPaths, spec: VmSpec) -> Path:
    """An identical copy of the data image in every site's replica dir; returns the image."""
    image = build_data_image(spec)
    stamp_text = image.name + "\n"
    for s in sites():
        sp = paths.site(s.name)
        dest = sp.host_path(replica_path(spec.name))
        stamp = dest.with_suffix(".source")
        if dest.exists() and stamp.exists() and stamp.read_text() == stamp_text:
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".tmp")
        shutil.copyfile(image, tmp)
        os.replace(tmp, dest)
        stamp.write_text(stamp_text)
    return image


def replica_digest(paths: LabPaths, site: str, vm: str) -> str:
    """SHA-256 of a site's replica of `vm`'s data disk."""
    h = hashlib.sha256()
    with open(paths.site(site).host_path(replica_path(vm)), "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
