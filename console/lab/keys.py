"""The lab's SSH material: the operator key, each site's host key, a private known_hosts, and an
`ssh` wrapper that enforces that known_hosts (libvirt's OpenSSH transport ignores `known_hosts=`,
so `qemu+ssh://…&command=<wrapper>` is how libvirt checks host keys against the lab's file)."""

from __future__ import annotations

from pathlib import Path

from pcteleport.lab import shell
from pcteleport.lab.paths import LabPaths
from pcteleport.lab.topology import sites


def _keygen(path: Path, comment: str) -> None:
    if path.exists() and path.with_suffix(".pub").exists():
        return
    path.unlink(missing_ok=True)
    shell.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])


def ensure(paths: LabPaths) -> None:
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.root.chmod(0o700)
    _keygen(paths.key, "pcteleport-lab-operator")
    lines = []
    for s in sites():
        sp = paths.site(s.name)
        sp.root.mkdir(parents=True, exist_ok=True)
        _keygen(sp.host_key, f"pcteleport-lab-{s.name}")
        pub = sp.host_key.with_suffix(".pub").read_text().split()
        lines.append(f"{s.mgmt_addr} {pub[0]} {pub[1]}\n")
    _write_if_changed(paths.known_hosts, "".join(lines))
    wrapper = (
        "#!/bin/sh\n"
        "# ssh for the pcteleport lab: host keys are checked against the lab's own known_hosts.\n"
        f"exec ssh -o UserKnownHostsFile={paths.known_hosts} -o GlobalKnownHostsFile=/dev/null "
        f"-o StrictHostKeyChecking=yes -o BatchMode=yes -o IdentitiesOnly=yes "
        f"-i {paths.key} \"$@\"\n"
    )
    paths.ssh_wrapper.parent.mkdir(parents=True, exist_ok=True)
    _write_if_changed(paths.ssh_wrapper, wrapper)
    paths.ssh_wrapper.chmod(0o755)


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
