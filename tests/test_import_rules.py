"""The rooms of ../shared/architecture.md, enforced: a module that imports what its room must not
fails here, naming the file, the line and the rule (issue 12). Imports inside functions count:
a lazy import is still a dependency."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
UI_LIBS = ("textual", "textual_plotext", "plotext", "rich")
HOST_LIBS = ("libvirt", "libvirt_qemu", "asyncssh")

#: room (a folder under console/, or a top-level module) -> names it must never import
NEVER: dict[str, tuple[str, ...]] = {
    # the stream, the codec and the relays run on any host: no libvirt, SSH, UI, or our rooms
    "teleport": (*HOST_LIBS, *UI_LIBS, "humanize", "pcteleport.sites", "pcteleport.ui",
                 "pcteleport.lab", "pcteleport.bench", "pcteleport.backend",
                 "pcteleport.records", "pcteleport.headless", "pcteleport.guestimage"),
    # the Backend contract and the records: what the UI, the CLI and bench share
    "backend": (*HOST_LIBS, *UI_LIBS, "pcteleport.sites", "pcteleport.ui", "pcteleport.lab"),
    "records": (*HOST_LIBS, *UI_LIBS, "pcteleport.sites", "pcteleport.ui", "pcteleport.lab"),
    "record_store": (*HOST_LIBS, *UI_LIBS, "pcteleport.sites", "pcteleport.ui"),
    "compare": (*HOST_LIBS, *UI_LIBS, "pcteleport.sites", "pcteleport.ui"),
    "predict": (*HOST_LIBS, *UI_LIBS, "pcteleport.sites", "pcteleport.ui"),
    "engine": (*HOST_LIBS, *UI_LIBS, "pcteleport.sites", "pcteleport.ui"),
    # the image cache runs on site hosts too (`pcteleport images host-…`): like teleport
    "imagecache": (*HOST_LIBS, *UI_LIBS, "pcteleport.sites", "pcteleport.ui", "pcteleport.lab",
                   "pcteleport.bench", "pcteleport.backend", "pcteleport.records",
                   "pcteleport.headless", "pcteleport.guestimage", "pcteleport.teleport"),
    # backends never import Textual
    "sites": (*UI_LIBS, "pcteleport.ui", "pcteleport.bench", "pcteleport.lab"),
    "headless": (*UI_LIBS, "pcteleport.ui"),
    "lab": (*UI_LIBS, "pcteleport.ui", "pcteleport.bench"),
    "bench": (*UI_LIBS, "pcteleport.ui"),
    "guestimage": (*HOST_LIBS, *UI_LIBS, "pcteleport.sites", "pcteleport.ui", "pcteleport.lab",
                   "pcteleport.bench"),
    # the UI reaches sites only through the Backend contract
    "ui": (*HOST_LIBS, "pcteleport.sites", "pcteleport.teleport", "pcteleport.lab",
           "pcteleport.bench", "pcteleport.headless"),
}
#: (file, name) pairs allowed against their room's rule, each for a stated reason
EXCEPTIONS = {
    # the one place the console picks its backend (the configured sites, or a replay)
    ("console/ui/launch.py", "pcteleport.sites"),
    # where `pcteleport` finds the sites config by default: the lab's state directory
    ("console/sites/backends.py", "pcteleport.lab"),
}


def imports(source: str) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            # `from pcteleport import sites` imports the room as surely as `import` does
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def room_of(path: str) -> str:
    parts = Path(path).relative_to("console").parts
    return parts[0] if len(parts) > 1 else Path(parts[0]).stem


def violations(path: str, source: str) -> list[str]:
    """Lines that break `path`'s room rule (path relative to the repository)."""
    if path.startswith("guest/"):  # the agent runs in guests: the standard library only
        return [f"{path}:{line}: imports {name}: the guest agent may use the stdlib only"
                for line, name in imports(source)
                if name.split(".")[0] not in sys.stdlib_module_names]
    never = NEVER.get(room_of(path), ())
    found: dict[tuple[int, str], str] = {}  # one line per import statement and rule
    for line, name in imports(source):
        for rule in never:
            if (name == rule or name.startswith(rule + ".")) and (path, rule) not in EXCEPTIONS:
                found.setdefault((line, rule), f"{path}:{line}: imports {name}: room "
                                               f"{room_of(path)!r} must not import {rule}")
    return list(found.values())


def test_every_module_keeps_its_room():
    files = sorted((REPO / "console").rglob("*.py")) + sorted((REPO / "guest").rglob("*.py"))
    found = [v for f in files
             for v in violations(str(f.relative_to(REPO)), f.read_text())]
    assert not found, "\n".join(found)


def test_every_room_has_a_rule():
    rooms = {room_of(str(f.relative_to(REPO))) for f in (REPO / "console").rglob("*.py")}
    assert rooms - set(NEVER) <= {"__init__", "cli", "errors"}, rooms - set(NEVER)


def test_the_rules_catch_what_they_name():
    """The checks can fail: the two the issue names, and a few more."""
    assert violations("console/teleport/relay.py", "import libvirt\n") == [
        "console/teleport/relay.py:1: imports libvirt: room 'teleport' must not import libvirt"]
    assert violations("console/sites/libvirt/backend.py",
                      "def f():\n    from textual.app import App\n")
    assert violations("console/ui/main_screen.py", "from pcteleport import sites\n")
    assert violations("console/ui/main_screen.py", "import pcteleport.sites.libvirt.backend\n")
    assert violations("guest/agent.py", "import requests\n")
    assert not violations("guest/agent.py", "import json, os.path\n")
    assert not violations("console/ui/launch.py",
                          "from pcteleport.sites.backends import open_configured_backend\n")
