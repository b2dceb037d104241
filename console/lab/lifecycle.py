"""`lab up` and `lab down`: bring the whole lab to its running state, or remove every trace of it
from the host (namespaces, processes, links, mount points). Both are idempotent."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pcteleport.errors import PcteleportError
from pcteleport.lab import (
    config,
    disks,
    guestboot,
    keys,
    network,
    scenarios,
    shell,
    site,
    tls,
    vms,
    wan,
    wanprofiles,
)
from pcteleport.lab.paths import SITE_AGENT_DIR, SITE_VM_DIR, LabPaths
from pcteleport.lab.topology import Site, clashing_instance, instance, sites, subnet

Progress = Callable[[str], None]


@dataclass
class UpReport:
    seconds: float = 0.0
    wan_mode: str = ""
    wan_profile: str = ""
    vms: dict[str, str] = field(default_factory=dict)  # name -> site
    started: list[str] = field(default_factory=list)
    boot_s: dict[str, float] = field(default_factory=dict)
    config: str = ""


def require_root() -> None:
    if os.geteuid() != 0:
        raise PcteleportError("the lab needs root (namespaces, libvirtd): run it with sudo")
    for tool in ("ip", "tc", "nsenter", "unshare", site.LIBVIRTD, site.SSHD, "ssh-keygen",
                 "certtool", "qemu-system-x86_64", "qemu-img", "mkfs.ext4"):
        if shutil.which(tool) is None:
            raise PcteleportError(f"{tool} is missing: run scripts/setup.sh as root")


def _vm_list_file(paths: LabPaths) -> Path:
    return paths.root / "vms.json"


def selected_vms(paths: LabPaths) -> list[str]:
    try:
        return list(json.loads(_vm_list_file(paths).read_text()))
    except (OSError, ValueError):
        return []


def up(vm_names: Sequence[str] | None = None, profile: str | None = None,
       progress: Progress = lambda _m: None, boot_timeout: float = 60) -> UpReport:
    require_root()
    paths = LabPaths.default()
    paths.root.mkdir(parents=True, exist_ok=True)
    with shell.locked(paths.lock, "`lab up`"):
        return _up(paths, vm_names, profile, progress, boot_timeout)


def _up(paths: LabPaths, vm_names: Sequence[str] | None, profile: str | None,
        progress: Progress, boot_timeout: float) -> UpReport:
    t0 = time.monotonic()
    report = UpReport()
    # Arguments first: a typo must not leave a half-built lab behind.
    if profile is not None:
        wanprofiles.profile(profile)
    names = list(dict.fromkeys([*selected_vms(paths), *(vm_names or ())]))
    if not names:
        names = list(scenarios.DEFAULT_VMS)
    specs = [scenarios.load(n) for n in names]
    clash = clashing_instance(shell.netns_names())
    if clash:
        raise PcteleportError(
            f"lab instance {instance() or '(default)'} would use the addresses of the running lab "
            f"instance {clash} ({subnet()}): take that one down "
            "or pick another PCTELEPORT_LAB_INSTANCE")
    keys.ensure(paths)
    site.ensure_mountpoints(paths)
    for s in sites():
        network.ensure_netns(s)
        network.ensure_mgmt(s)
    st = wan.ensure(paths, profile)
    report.wan_mode, report.wan_profile = st.mode, st.profile
    progress(f"WAN: {st.profile} ({st.mode} delay)")
    tls.ensure(paths, sites())  # before libvirtd: it checks that the cert dir exists
    for s in sites():
        conf_changed = site.prepare_files(paths, s)
        holder = site.ensure_holder(paths, s)
        if conf_changed:  # e.g. a lab from before TLS: its libvirtd read no cert dir
            site.stop_libvirtd(paths, s)
        site.ensure_libvirtd(paths, s, holder)
        site.ensure_sshd(paths, s, holder)
        _check_ssh(paths, s)
        progress(f"site {s.name}: libvirtd and sshd at {s.mgmt_addr}")
    boot = guestboot.lab_boot()
    for spec in specs:  # base images first: the slow part, done before any guest competes
        disks.ensure_bases(paths, spec, boot)
    started_at: dict[str, tuple[str, float]] = {}
    for spec in specs:
        where, started = vms.ensure_vm(paths, spec, boot)
        report.vms[spec.name] = where
        if started:
            report.started.append(spec.name)
            started_at[spec.name] = (where, time.monotonic())
    report.boot_s = vms.wait_all_booted(paths, started_at, boot_timeout)
    for name, secs in report.boot_s.items():
        progress(f"VM {name}: booted at {report.vms[name]} in {secs:.1f} s")
    if names != selected_vms(paths):
        _vm_list_file(paths).write_text(json.dumps(names) + "\n")
    report.config = str(config.write(paths, st.profile, specs))
    report.seconds = time.monotonic() - t0
    return report


def write_config(paths: LabPaths, profile: str) -> None:
    """Rewrite the sites config (after a live WAN profile switch)."""
    if paths.sites_toml.exists():
        specs = [scenarios.load(n) for n in selected_vms(paths)]
        config.write(paths, profile, specs)


def _check_ssh(paths: LabPaths, s: Site) -> None:
    out = shell.run([str(paths.ssh_wrapper), f"root@{s.mgmt_addr}", "true"], check=False,
                    timeout=30)
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["no output"])[-1]
        raise PcteleportError(f"cannot log in to site {s.name} over SSH: {last} "
                              f"(see {paths.site(s.name).sshd_log})")


def is_up(paths: LabPaths | None = None) -> bool:
    paths = paths or LabPaths.default()
    return all(site.holder_pid(paths, s) is not None for s in sites())


def down(progress: Progress = lambda _m: None) -> None:
    require_root()
    paths = LabPaths.default()
    paths.root.mkdir(parents=True, exist_ok=True)
    with shell.locked(paths.lock, "`lab down`"):
        _down(paths, progress)


def _down(paths: LabPaths, progress: Progress) -> None:
    wan.stop_delay_line(paths)  # first: its tun devices go with the namespaces
    present = shell.netns_names()
    for s in sites():
        pids: set[int] = set()
        if s.netns in present:
            out = shell.run(["ip", "netns", "pids", s.netns], check=False).stdout
            pids |= {int(p) for p in out.split()}
        holder = site.holder_pid(paths, s)
        if holder is not None:
            pids.add(holder)
        _stop_all(pids)
        if s.netns in present:
            shell.run(["ip", "netns", "del", s.netns])
        network.remove_mgmt(s)
        progress(f"site {s.name}: stopped {len(pids)} processes, removed its namespaces")
    _forget_runtime(paths)
    site.remove_mountpoints()
    progress("lab is down")


def _stop_all(pids: set[int]) -> None:
    """TERM every process of a site at once (QEMU, libvirtd, sshd, holder), then KILL stragglers;
    each by its own pid — they all live in the lab's own network namespace."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(shell.pid_alive(p) for p in pids):
        time.sleep(0.05)
    for pid in pids:
        if shell.pid_alive(pid):
            shell.stop_pid(pid, timeout=0)


def _forget_runtime(paths: LabPaths) -> None:
    """Remove what must not survive a `down`: libvirt's domains and runtime state, sockets,
    per-VM logs and disk overlays, the WAN state and the sites config. Keys, the image cache
    and libvirt's capability cache stay (they only make the next `up` faster)."""
    for s in sites():
        sp = paths.site(s.name)
        for d in (sp.etc_libvirt, sp.run_libvirt, sp.lib_libvirt, sp.host_path(SITE_VM_DIR),
                  sp.host_path(SITE_AGENT_DIR)):
            shutil.rmtree(d, ignore_errors=True)
        for f in (sp.holder_pid, sp.sshd_pid):
            f.unlink(missing_ok=True)
    for f in (paths.wan_state, paths.sites_toml, _vm_list_file(paths)):
        f.unlink(missing_ok=True)
