"""Libvirt domain XML for a lab VM: TCG, direct kernel boot, writable root and data disks (each a
qcow2 overlay on a raw base of the site's image cache, see disks.py), a serial console log and
the agent/shell virtio-serial channels, all at site-local paths (/srv/...) that exist at both
sites so the same XML is valid after a migration. Guest RAM is a shared memfd, so a soak can
compare it page by page across a migration (sites/ramcheck.py)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from pcteleport.guestimage import GuestBoot
from pcteleport.lab.disks import LabDisk, vm_disks
from pcteleport.lab.guestboot import AGENT_PORT, SHELL_PORT
from pcteleport.lab.paths import SITE_AGENT_DIR, SITE_VM_DIR
from pcteleport.lab.scenarios import VmSpec

EMULATOR = "/usr/bin/qemu-system-x86_64"


def emulator() -> str:
    """The QEMU binary lab VMs run: PCTELEPORT_LAB_EMULATOR, e.g. Debian 12's 7.2 unpacked
    beside the installed engine to show what its TCG dirty-page loss does (bench soak)."""
    return os.environ.get("PCTELEPORT_LAB_EMULATOR") or EMULATOR
_UUID_NS = uuid.UUID("6f1c0d4e-58a4-4c55-9d1f-7e0c2a9b3d10")


def vm_uuid(name: str) -> str:
    """Stable per name, so both sites and every lab run agree on a VM's identity."""
    return str(uuid.uuid5(_UUID_NS, name))


def console_log(vm: str) -> Path:
    return SITE_VM_DIR / vm / "console.log"


def agent_socket(vm: str) -> Path:
    return SITE_AGENT_DIR / f"{vm}.agent.sock"


def shell_socket(vm: str) -> Path:
    return SITE_AGENT_DIR / f"{vm}.shell.sock"


def _q(value: object) -> str:
    return quoteattr(str(value))


def _disk(d: LabDisk) -> str:
    return (
        "    <disk type='file' device='disk'>\n"
        "      <driver name='qemu' type='qcow2'/>\n"
        f"      <source file={_q(d.overlay)}/>\n"
        "      <backingStore type='file'>\n"
        "        <format type='raw'/>\n"
        f"        <source file={_q(d.base)}/>\n"
        "        <backingStore/>\n"
        "      </backingStore>\n"
        f"      <target dev='{d.target}' bus='virtio'/>\n"
        f"      <serial>{d.serial}</serial>\n"
        "    </disk>\n"
    )


def _channel(path: Path, port: str) -> str:
    return (
        "    <channel type='unix'>\n"
        f"      <source mode='bind' path={_q(path)}/>\n"
        f"      <target type='virtio' name={_q(port)}/>\n"
        "    </channel>\n"
    )


def domain_xml(spec: VmSpec, boot: GuestBoot) -> str:
    if boot.root_image is None:
        raise ValueError("the lab boots guests from a root image (guestimage.debian_boot)")
    disks = "".join(_disk(d) for d in vm_disks(spec, boot))
    os_xml = boot.with_args(f"pct.hostname={spec.name}").libvirt_os_xml()
    os_xml = "\n".join("  " + line for line in os_xml.splitlines())
    return (
        "<domain type='qemu'>\n"
        f"  <name>{spec.name}</name>\n"
        f"  <uuid>{vm_uuid(spec.name)}</uuid>\n"
        f"  <description>{escape(spec.description)}</description>\n"
        f"  <memory unit='MiB'>{spec.memory_mib}</memory>\n"
        "  <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>\n"
        f"  <vcpu>{spec.vcpus}</vcpu>\n"
        f"{os_xml}\n"
        "  <features><acpi/></features>\n"
        "  <cpu mode='maximum' check='none'/>\n"
        "  <clock offset='utc'/>\n"
        "  <on_poweroff>destroy</on_poweroff>\n"
        "  <on_reboot>destroy</on_reboot>\n"
        "  <on_crash>destroy</on_crash>\n"
        "  <devices>\n"
        f"    <emulator>{escape(emulator())}</emulator>\n"
        f"{disks}"
        "    <controller type='usb' model='none'/>\n"
        "    <controller type='virtio-serial' index='0'/>\n"
        f"{_channel(agent_socket(spec.name), AGENT_PORT)}"
        f"{_channel(shell_socket(spec.name), SHELL_PORT)}"
        "    <serial type='file'>\n"
        f"      <source path={_q(console_log(spec.name))} append='on'/>\n"
        "      <target port='0'/>\n"
        "    </serial>\n"
        "    <video><model type='none'/></video>\n"
        "    <memballoon model='none'/>\n"
        "  </devices>\n"
        "</domain>\n"
    )
