"""Bad input on the command line gets one clear line and starts nothing (no lab needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pcteleport.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, stdin=subprocess.DEVNULL,
                          env={**os.environ, **(env or {})})


def one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("usage:")
             and not ln.startswith(" ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("value", ["-5", "0", "nan", "inf", "fast"])
def test_a_bandwidth_cap_must_be_a_finite_number_above_zero(value: str) -> None:
    out = cli("migrate", "web", "--to", "osaka", "--bandwidth", value)
    assert out.returncode == 2
    assert "argument --bandwidth" in one_line(out.stderr)


@pytest.mark.parametrize("args", [("bench", "codec", "--repeat", "0"),
                                  ("bench", "--repeat", "0"),
                                  ("bench", "soak", "--vm", "web", "--runs", "-1")])
def test_counts_must_be_one_or_more(args: tuple[str, ...]) -> None:
    out = cli(*args)
    assert out.returncode == 2
    assert "give 1 or more" in one_line(out.stderr)


def test_bench_report_of_a_missing_or_foreign_file_is_one_line(tmp_path: Path) -> None:
    missing = cli("bench", "--report", str(tmp_path / "absent.json"))
    assert missing.returncode == 2
    assert one_line(missing.stderr) == (f"pcteleport: cannot read {tmp_path / 'absent.json'}: "
                                        "No such file or directory")
    (tmp_path / "bad.json").write_text("not json")
    bad = cli("bench", "--report", str(tmp_path / "bad.json"))
    assert bad.returncode == 2 and "is not a bench run's JSON" in one_line(bad.stderr)
    (tmp_path / "other.json").write_text('{"vm": "web"}')
    other = cli("bench", "--report", str(tmp_path / "other.json"))
    assert other.returncode == 2 and "give the .json that `pcteleport bench` wrote" in \
        one_line(other.stderr)


def test_no_reachable_site_is_named_not_hidden(tmp_path: Path) -> None:
    """Sites whose SSH port refuses: `vms` fails saying so (it exited 0 with an empty table),
    and `migrate` names the connection failure rather than "no VM at any site"."""
    sites = tmp_path / "sites.toml"
    sites.write_text("".join(
        f"[[site]]\nname = '{name}'\nlibvirt_uri = 'qemu+ssh://root@127.0.0.1:1/system'\n"
        f"ssh = {{ host = '127.0.0.1', port = 1 }}\n\n" for name in ("tokyo", "osaka")))
    env = {"PCTELEPORT_SITES": str(sites)}
    vms = cli("vms", env=env)
    assert vms.returncode == 2
    line = next(ln for ln in vms.stderr.splitlines() if ln.startswith("pcteleport:"))
    assert line.startswith("pcteleport: no site answered: cannot reach libvirt at tokyo")
    assert "cannot reach libvirt at osaka" in line
    mig = cli("migrate", "web", "--to", "osaka", env=env)
    assert mig.returncode == 2
    assert one_line(mig.stderr).startswith(
        "pcteleport: no running VM 'web' at the sites that answered; cannot reach libvirt at")
