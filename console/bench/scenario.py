"""What `pcteleport bench` needs of a scenario: the lab's VM definition (console/lab/
scenarios.py) plus the `[warm]` command and the `[measure]` table of `scenarios/<name>.toml`."""

from __future__ import annotations

import shlex
import tomllib
from dataclasses import dataclass

from pcteleport.errors import PcteleportError
from pcteleport.lab import scenarios as lab_scenarios

GUEST_PROGRAMS = lab_scenarios.GUEST_PROGRAMS


@dataclass(frozen=True)
class BenchScenario:
    name: str  # the scenario, and the lab VM of that name
    memory_mib: int
    warm_command: str
    read_paths: tuple[str, ...]  # the paper's measure: file-read blocks/s over these
    workload: tuple[str, ...]  # program in scenarios/guest/ and its arguments; () for none
    metric: str  # the workload's per-second counter
    unit: str
    auto_converge: bool = False  # [bench] auto_converge: every mode gets libvirt's auto-converge

    @property
    def has_workload(self) -> bool:
        return bool(self.workload)


def load(name: str) -> BenchScenario:
    spec = lab_scenarios.load(name)
    try:
        doc = tomllib.loads(spec.source.read_text())
        measure = doc.get("measure", {})
        auto_converge = doc.get("bench", {}).get("auto_converge", False)
        if not isinstance(auto_converge, bool):
            raise ValueError("[bench] auto_converge must be true or false")
        read_paths = tuple(str(p) for p in measure.get("read_paths", ()))
        workload = tuple(shlex.split(str(measure.get("workload", ""))))
        metric = str(measure.get("metric", ""))
        unit = str(measure.get("unit", ""))
    except (tomllib.TOMLDecodeError, TypeError, ValueError) as exc:
        raise PcteleportError(f"{spec.source}: [measure] is invalid ({exc}): fix it") from exc
    if not read_paths:
        raise PcteleportError(f"{spec.source}: [measure] read_paths is missing: name the "
                              "directories whose read throughput the benchmark measures")
    if workload:
        program = GUEST_PROGRAMS / workload[0]
        if not program.is_file():
            raise PcteleportError(f"{spec.source}: workload program {workload[0]} is not in "
                                  f"{GUEST_PROGRAMS}")
        if not metric:
            raise PcteleportError(f"{spec.source}: [measure] metric is missing: name the "
                                  f"per-second counter of {workload[0]}")
    return BenchScenario(spec.name, spec.memory_mib, spec.warm_command, read_paths, workload,
                         metric, unit, auto_converge)
