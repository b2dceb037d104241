"""The destination guest after the switch-over: does it run, did it crash (its serial console
since the migration began), does its page cache match the disk (the agent's verify), and — for
soaks — is its RAM the source's at the switch-over, page by page."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from pcteleport.errors import PcteleportError
from pcteleport.records import MigrationRecord, RamCheck, WriteCheck
from pcteleport.sites.guest_agent import AgentUnavailable, GuestAgent
from pcteleport.sites.libvirt import guest_health
from pcteleport.sites.libvirt.migration.plan import MigrationFailed, Plan, ram_layout
from pcteleport.sites.libvirt.ramcheck import RamCheckError, RamProbe, compare_across

WRITE_CHECK_LIMIT_S = 120.0  # a journal of hours of writes is checked in part, and says so
QEMU_LOG_DIR = "/var/log/libvirt/qemu"  # libvirt's log of each domain's QEMU, at every site
_STOPPED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+)\+0000: shutting down, "
                      r"reason=(\w+)")


def qemu_crashed_since(log_text: str, since: float) -> bool:
    """Does libvirt's log of a QEMU say it last stopped on its own (killed, crashed: libvirt
    writes reason=crashed; its own clean-up of a failed incoming migration says
    reason=failed) at or after `since` (epoch seconds; a little slack for the site's clock)?"""
    for line in reversed(log_text.splitlines()):
        m = _STOPPED.match(line)
        if m:
            at = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
            return m[2] == "crashed" and at.timestamp() >= since - 5
    return False


class Destination:
    def __init__(self, plan: Plan, record: MigrationRecord, log: Callable[[str], None]) -> None:
        self.plan, self.record, self.log = plan, record, log
        self.console_offset: int | None = None  # the destination console's size at the start

    def note_console(self) -> None:
        """Remember where the destination's console ends now: a crash is what comes after."""
        self.console_offset = guest_health.console_size(self.plan.dst, self.plan.console_log)

    def crashed(self) -> MigrationFailed | None:
        """The failure to report if the destination's console shows the guest crashed."""
        p = self.plan
        crash = guest_health.crash_lines(p.dst, p.console_log, self.console_offset)
        if not crash:
            return None
        self.record.guest_console = crash
        return MigrationFailed(f"VM {p.vm} crashed at {p.dst.name} after the switch-over "
                               f"(guest console: {guest_health.crash_summary(crash)!r})")

    def qemu_crashed(self) -> bool:
        """Did the destination's QEMU end on its own during this run (its libvirt log)?"""
        p = self.plan
        try:
            out = p.dst.host.run(["tail", "-n", "40", f"{QEMU_LOG_DIR}/{p.vm}.log"], timeout=20)
        except PcteleportError:
            return False
        return qemu_crashed_since(out.stdout, self.record.started_at)

    def check(self) -> None:
        """The destination guest runs and its console shows no oops or panic."""
        p = self.plan
        crashed = self.crashed()
        if crashed is not None:
            raise crashed
        if guest_health.where_runs([p.dst], p.vm_uuid) != p.dst.name:
            raise MigrationFailed(f"VM {p.vm} is not running at {p.dst.name} after migration")

    def verify(self, agent: GuestAgent) -> None:
        """The agent answers, and the cached pages it checks match the destination's disk."""
        p = self.plan
        deadline = time.monotonic() + 30
        while True:
            try:
                agent.ping()
                break
            except PcteleportError as exc:
                if time.monotonic() > deadline:
                    # did it die while we waited?
                    raise self.crashed() or MigrationFailed(f"after migration: {exc}") from None
                time.sleep(1)
        # the data disk, and every other disk teleport restored pages of (the root disk)
        serials = list(dict.fromkeys([p.data_serial, *(d.serial for d in getattr(p, "disks", [])
                                                       if d.teleport and d.serial)]))
        for serial in serials or [""]:
            self._verify_disk(agent, serial)

    def _verify_disk(self, agent: GuestAgent, serial: str) -> None:
        p = self.plan
        params: dict[str, object] = {"disk": serial} if serial else {}
        if p.verify_pages:
            params["sample"] = p.verify_pages
        try:
            result = agent.call("verify", params, timeout=180)
        except AgentUnavailable as exc:  # once more: the port may have held a stale line
            self.log(f"verification: {exc}; asking again")
            result = agent.call("verify", params, timeout=180)
        bad = result.get("mismatches") or []
        if bad:
            raise MigrationFailed(
                f"verification: VM {p.vm} at {p.dst.name}: {len(bad)} cached page(s) differ "
                "from the disk "
                f"(first: {bad[0]}): do not trust this VM's page cache; drop it in the guest"
            )
        checked, files = result.get("pages_checked", 0), result.get("files", 0)
        which = (f"the {checked} cached pages of {files} file{'' if files == 1 else 's'} drawn at"
                 f" random (of {result.get('files_on_disk', '?')})" if result.get("sampled")
                 else f"all {checked} cached pages")
        took = result.get("elapsed_ms")
        disk = f"disk {serial}" if serial else "the disk"
        self.log(f"verified at {p.dst.name}: guest agent answers, {which} match {disk}"
                 + (f" ({took / 1000:.1f} s in the guest)" if took is not None else ""))

    def check_writes(self, agent: GuestAgent) -> None:
        """Every write the guest's workloads journaled as durable is there at the destination
        (the agent's check-writes): a missing one fails the migration, naming it."""
        p = self.plan
        try:
            result = agent.call("check-writes", {"limit_s": WRITE_CHECK_LIMIT_S},
                                timeout=WRITE_CHECK_LIMIT_S + 60)
        except PcteleportError as exc:
            if "unknown method" in str(exc):  # an agent older than the check
                self.log("writes not checked: the guest agent has no check-writes")
                return
            raise MigrationFailed(f"after migration: checking the guest's writes: {exc}") from exc
        check = WriteCheck(journals=len(result.get("journals") or []),
                           entries=int(result.get("entries", 0)),
                           checked=int(result.get("checked", 0)),
                           failed=int(result.get("failed", 0)),
                           failures=list(result.get("failures") or [])[:10],
                           elapsed_s=round(float(result.get("elapsed_ms", 0)) / 1000, 2))
        self.record.write_check = check
        if check.failed:
            raise MigrationFailed(
                f"write check: VM {p.vm} at {p.dst.name}: {check.failed} of {check.checked} "
                f"journaled writes are missing or changed (first: {check.failures[0]})")
        if not check.journals:
            self.log("writes checked: the guest keeps no write journal")
            return
        self.log(f"writes checked at {p.dst.name}: {check.checked} journaled writes in "
                 f"{check.journals} journal{'' if check.journals == 1 else 's'} all there "
                 f"({check.elapsed_s:.1f} s in the guest)"
                 + ("" if check.complete else f"; {check.entries - check.checked} not checked "
                    f"within {WRITE_CHECK_LIMIT_S:.0f} s"))

    def compare_ram(self, source: RamProbe | None, evidence_dir: Path) -> str:
        """Destination paused with the stream loaded, source RAM held since the switch-over:
        compare every page, keep the first differing ones, then let the destination run.
        Returns the problem found ("" when the RAM is the same)."""
        p = self.plan
        ddom = p.dst.domain(p.vm_uuid)
        try:
            if source is None:
                raise RamCheckError("the source's RAM was not held")
            dst = RamProbe(p.dst, p.vm)
            try:
                check: RamCheck = compare_across(source, dst, ram_layout(ddom).gpa, evidence_dir)
            finally:
                dst.close()
        except PcteleportError as exc:
            return f"RAM check could not compare: {exc}"
        finally:
            ddom.resume()  # whatever the check found, the VM goes on (its source is gone)
        self.record.ram_check = check
        self.log(f"RAM check: {check.pages} pages compared in {check.elapsed_s:.1f} s, "
                 f"{check.differing} differ")
        if not check.differing:
            return ""
        return (f"RAM check: {check.differing} of {check.pages} pages differ between "
                f"{p.src.name} at the switch-over and {p.dst.name} (first at guest-physical "
                f"{', '.join(check.first[:4])}): the destination guest is corrupted")
