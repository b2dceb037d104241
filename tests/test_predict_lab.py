"""`pcteleport migrate VM --to SITE --dry-run --json` on the real lab: every mode's predicted
WAN bytes and total time, the VM's T_min, from what it measured (map, RAM sample, dirty rate),
and nothing started: the VM still runs where it ran, no migration job, no record."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import lab_backend, require

pytestmark = [pytest.mark.root, pytest.mark.lab, pytest.mark.slow]

INSTANCE = "pd"  # a lab of its own, as tests/test_disks_lab.py has
VM = "web-small"
ROOT = Path(__file__).resolve().parent.parent


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pcteleport.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The lab instance's record store (conftest.lab_backend brings the instance up and down)."""
    require(os.geteuid() == 0, "the lab needs root")
    require(shutil.which("qemu-system-x86_64") is not None, "QEMU is not installed")
    records = tmp_path_factory.mktemp("records")
    with lab_backend(INSTANCE, VM, records):
        yield records


def _where() -> str:
    vms = json.loads(_cli("vms", "--json").stdout)["vms"]
    return next(v["site"] for v in vms if v["name"] == VM and v["state"] == "running")


def test_dry_run_predicts_every_mode_and_t_min_and_starts_nothing(lab: Path) -> None:
    before = _where()
    other = "osaka" if before == "tokyo" else "tokyo"
    proc = _cli("migrate", VM, "--to", other, "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["dry_run"] is True
    modes = {m["mode"]: m for m in out["modes"]}
    assert set(modes) == {"stock", "drop-cache", "zstd", "teleport"}
    for m in modes.values():
        assert m["predicted_wan_bytes"] > 0 and m["predicted_total_s"] > 0
    assert out["t_min_s"] is not None and out["t_min_s"] > 0
    assert all(m["predicted_total_s"] >= out["t_min_s"] for m in modes.values())
    # the web guest caches files on its disks: teleport is predicted to send the least
    assert modes["teleport"]["predicted_wan_bytes"] < modes["stock"]["predicted_wan_bytes"]
    inputs = out["inputs"]
    assert inputs["sample_pages"] > 0 and 0 <= inputs["zero_fraction"] <= 1
    assert inputs["restorable_bytes"] > 0, inputs["problems"]
    assert inputs["dirty_rate_bytes_per_s"] is not None, inputs["problems"]
    # the lab's guests are TCG: QEMU's bitmap mode reads 0 there, sampling measured, and the
    # operator is told what sampling cannot see
    assert inputs["qemu_version"] and inputs["dirty_rate_method"] == "page-sampling"
    assert out["caveats"] and "same bytes" in out["caveats"][0]
    # nothing started: the VM runs where it ran, and no migration was recorded
    assert _where() == before
    assert not list(lab.glob("**/*.json"))
