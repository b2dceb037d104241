"""What `pip install` puts on the import path: one top-level name, `pcteleport` (issue 12).

The folders the design card fixes (`console/`, `guest/`) are mapped under it in pyproject.toml;
a generic name such as `console` or `guest` in site-packages would clash with other projects."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_wheel_holds_only_pcteleport(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                           str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("pcteleport-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"pcteleport"}
    # The guest agent and the stylesheet travel with it (the image build and the UI read them).
    assert "pcteleport/guest/agent.py" in names
    assert "pcteleport/ui/pcteleport.tcss" in names


def test_the_installed_names_outside_the_checkout(tmp_path):
    """From another directory (so the checkout's folders are not on the path), only our name
    imports; `console` and `guest` are not ours to take."""
    code = ("import importlib.util as u, pcteleport.guest.agent, pcteleport.cli;"
            "print(u.find_spec('console') is None, u.find_spec('guest') is None)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True"]
    cli = subprocess.run([Path(sys.executable).with_name("pcteleport"), "--version"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0 and cli.stdout.startswith("pcteleport "), cli.stderr
