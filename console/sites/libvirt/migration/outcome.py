"""How a failed or aborted run ends: the source VM running and the destination discarded when
QEMU had not finished, and in every case where the VM really runs, asked of both sites."""

from __future__ import annotations

import contextlib
import time

import libvirt

from pcteleport.errors import PcteleportError
from pcteleport.records import MigrationRecord
from pcteleport.sites.libvirt import guest_health
from pcteleport.sites.libvirt.migration.destination import Destination
from pcteleport.sites.libvirt.migration.plan import Plan


def where_now(plan: Plan) -> str:
    return guest_health.where_runs([plan.dst, plan.src], plan.vm_uuid or plan.vm)


def after_switch_over(plan: Plan, record: MigrationRecord, destination: Destination) -> str:
    """QEMU finished, so the source is gone: where the VM runs is whatever the check finds."""
    if not record.guest_console:
        destination.crashed()
    where = where_now(plan)
    deadline = time.monotonic() + 5
    while record.guest_console and where == plan.dst.name and time.monotonic() < deadline:
        time.sleep(0.5)  # a panicking guest is gone a moment later (on_crash, reboot)
        where = where_now(plan)
    record.runs_at = where
    if where == guest_health.NOWHERE:
        return (f"VM {plan.vm} runs nowhere: its definition is at {plan.dst.name}, start "
                "it there once the cause is understood")
    if where:
        return f"VM {plan.vm} runs at {where}" + (
            " (its console shows a crash: do not trust it)" if record.guest_console else "")
    return f"could not tell where VM {plan.vm} runs (a site did not answer)"


def restore_source(plan: Plan, record: MigrationRecord, migrate_called: bool) -> str:
    """Before the switch-over: the source VM running, the destination's copy discarded."""
    notes = []
    try:
        # Only an incoming VM this run's migrate call made (and libvirt left behind): one
        # that was there before is somebody else's, maybe another migration's destination.
        ddom = plan.dst.find_domain(plan.vm_uuid or plan.vm) if migrate_called else None
        if ddom is not None and ddom.isActive() and \
                ddom.state()[0] != libvirt.VIR_DOMAIN_RUNNING:
            ddom.destroy()
            notes.append(f"discarded the incoming VM at {plan.dst.name}")
    except (libvirt.libvirtError, PcteleportError):
        notes.append(f"could not check {plan.dst.name} for a leftover incoming VM")
    try:
        dom = plan.src.find_domain(plan.vm_uuid or plan.vm)
        if dom is not None and migrate_called:  # (before: a job there is somebody else's)
            notes.extend(end_lingering_job(dom, plan.src.name, plan.vm))
        if dom is not None and dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
            dom.resume()  # libvirt resumes it on failure; make sure
    except (libvirt.libvirtError, PcteleportError):
        pass
    where = record.runs_at = where_now(plan)
    if where == plan.src.name:
        state = f"VM {plan.vm} is running at {plan.src.name}"
    elif where == guest_health.NOWHERE:
        state = f"VM {plan.vm} runs nowhere (NOT running at {plan.src.name})"
    elif where:
        state = f"VM {plan.vm} runs at {where}"
    else:
        state = f"VM {plan.vm} is in an unknown state at {plan.src.name}"
    return "; ".join([state, *notes])


#: how long a job libvirt still holds after the run may take to end once aborted
JOB_END_S = 30.0


def end_lingering_job(dom: libvirt.virDomain, site: str, vm: str,
                      wait_s: float = JOB_END_S) -> list[str]:
    """The run is over, so no job of ours may go on at the source: libvirt has been seen to
    hold a migration job for minutes after its client went, refusing every new migration
    ("another migration job is already running"). Such a job is aborted here."""
    if _job_type(dom) in (None, libvirt.VIR_DOMAIN_JOB_NONE):
        return []
    with contextlib.suppress(libvirt.libvirtError):
        dom.abortJob()
    deadline = time.monotonic() + wait_s
    while _job_type(dom) not in (None, libvirt.VIR_DOMAIN_JOB_NONE):
        if time.monotonic() >= deadline:
            return [f"libvirt at {site} still holds a job on VM {vm} after the run; "
                    f"`pcteleport abort {vm}` ends it"]
        time.sleep(0.5)
    return [f"aborted the job libvirt at {site} still held on VM {vm} after the run"]


def _job_type(dom: libvirt.virDomain) -> int | None:
    try:
        return int(dom.jobInfo()[0])
    except (libvirt.libvirtError, IndexError, TypeError, ValueError):
        return None  # no answer: nothing known to abort


def conclude(plan: Plan, record: MigrationRecord, destination: Destination, *, migrated: bool,
             migrate_called: bool) -> str:
    """Where the failed run left the VM, in the words the log and the operator get."""
    if migrated:
        return after_switch_over(plan, record, destination)
    return restore_source(plan, record, migrate_called)
