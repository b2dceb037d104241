"""VM definitions read from `scenarios/*.toml` (one file a scenario)."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pcteleport.errors import PcteleportError

SCENARIO_DIR = Path(
    os.environ.get("PCTELEPORT_SCENARIOS", Path(__file__).resolve().parents[2] / "scenarios")
)
DEFAULT_VMS = ("web", "tpcc", "idle")
FILLS = ("html", "sqlite", "none")
GUEST_PROGRAMS = SCENARIO_DIR / "guest"  # programs the guests run (stdlib Python)


@dataclass(frozen=True)
class VmSpec:
    name: str
    memory_mib: int
    vcpus: int
    description: str
    data_size_mib: int
    fill: str
    fill_mib: int
    warm_command: str
    source: Path
    #: scenarios/guest/ programs the warm command runs at boot: copied onto the data disk
    #: beside the warm script (/data/.pcteleport/), so the VM's service runs without the bench
    warm_programs: tuple[str, ...] = ()


def load(name: str) -> VmSpec:
    path = SCENARIO_DIR / f"{name}.toml"
    if not path.exists():
        known = ", ".join(available()) or "none"
        raise PcteleportError(f"no scenario {name!r} in {SCENARIO_DIR} (known: {known})")
    try:
        d = tomllib.loads(path.read_text())
        vm, data, warm = d["vm"], d.get("data", {}), d.get("warm", {})
        spec = VmSpec(
            name=str(vm.get("name", name)),
            memory_mib=int(vm["memory_mib"]),
            vcpus=int(vm.get("vcpus", 1)),
            description=str(vm.get("description", "")),
            data_size_mib=int(data.get("size_mib", 16)),
            fill=str(data.get("fill", "none")),
            fill_mib=int(data.get("fill_mib", 0)),
            warm_command=str(warm.get("command", "")),
            source=path,
            warm_programs=tuple(str(x) for x in warm.get("programs", ())),
        )
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError) as exc:
        raise PcteleportError(f"scenario file {path} is invalid ({exc}): fix it") from exc
    if spec.fill not in FILLS:
        raise PcteleportError(f"{path}: data.fill must be one of {', '.join(FILLS)}")
    missing = [x for x in spec.warm_programs if not (GUEST_PROGRAMS / x).is_file()]
    if missing:
        raise PcteleportError(f"{path}: warm.programs {', '.join(missing)} not in "
                              f"{GUEST_PROGRAMS}")
    if spec.fill_mib > spec.data_size_mib * 0.9:
        raise PcteleportError(f"{path}: data.fill_mib must leave 10% of data.size_mib free")
    return spec


def available() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))
