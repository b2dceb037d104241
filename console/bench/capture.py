"""Capture a real migration stream and its restorable map from a running lab VM.

The map comes from the guest agent; the stream from the VM's own QEMU, migrated with QMP
through libvirt to a one-shot TCP sink at the site, after which the VM is resumed where it
was. The files land in the site's directory and are read through the lab's view of it.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import libvirt
import libvirt_qemu

from pcteleport.errors import PcteleportError
from pcteleport.headless import open_backend
from pcteleport.sites.libvirt.migration import data_disk_of

# One connection in, its bytes to a file: argv = [port, path].
SINK = ("import socket,sys\n"
        "srv=socket.create_server(('127.0.0.1',int(sys.argv[1])))\n"
        "conn,_=srv.accept()\n"
        "with open(sys.argv[2],'wb') as f:\n"
        "    while b:=conn.recv(1<<20): f.write(b)\n")


def _qmp(dom: libvirt.virDomain, command: str, **arguments: object) -> dict:
    msg = {"execute": command, **({"arguments": arguments} if arguments else {})}
    reply = json.loads(libvirt_qemu.qemuMonitorCommand(dom, json.dumps(msg), 0))
    if "error" in reply:
        raise PcteleportError(f"QEMU refused {command}: {reply['error'].get('desc')}")
    return reply.get("return", {})


def capture_from_lab(vm: str) -> tuple[Path, Path, Path]:
    backend = open_backend()
    try:
        site = next((rt for rt in backend.sites_rt.values()
                     if (d := rt.find_domain(vm)) is not None and d.isActive()), None)
        if site is None:
            raise PcteleportError(f"no running VM {vm} at any site: `pcteleport lab up` first")
        host_dir = site.config.lab.get("host_dir")
        if not host_dir:
            raise PcteleportError(f"site {site.name} is not a lab site: give --stream, --disk "
                                  "and --map captured there")
        disk = data_disk_of(site.domain(vm))
        if disk is None:
            raise PcteleportError(f"VM {vm} has no data disk to teleport from")
        site_srv = Path("/srv")

        def on_host(path: str) -> Path:
            p = Path(path)
            if site_srv not in p.parents:
                raise PcteleportError(f"{path} is outside the site's /srv")
            return Path(host_dir) / p.relative_to(site_srv)

        capture_dir = f"/srv/vms/{vm}"
        stream_site = f"{capture_dir}/capture-stream.bin"
        text, _header = backend.agent(site, vm).restorable_map(disk.serial)
        map_host = on_host(f"{capture_dir}/capture-map.txt")
        map_host.write_text(text)
        dom = site.domain(vm)
        # libvirt's seccomp sandbox forbids QEMU to spawn `exec:` helpers: migrate over TCP
        # to a one-shot listener at the site that writes the stream to the file.
        port = random.randint(49200, 60999)
        sink = site.host.spawn([site.config.relay_command[0], "-c", SINK, str(port), stream_site],
                               lambda _line: None)
        time.sleep(1.0)
        _qmp(dom, "migrate", uri=f"tcp:127.0.0.1:{port}")
        deadline = time.monotonic() + 600
        try:
            while True:
                status = _qmp(dom, "query-migrate").get("status")
                if status == "completed":
                    break
                if status in ("failed", "cancelled") or time.monotonic() > deadline:
                    raise PcteleportError(f"capturing the stream of {vm} ended '{status}'")
                time.sleep(0.2)
        finally:
            if dom.state()[0] == libvirt.VIR_DOMAIN_PAUSED:
                _qmp(dom, "cont")
        if sink.wait(60) != 0:
            raise PcteleportError(f"the stream sink at {site.name} failed: "
                                  f"{' '.join(sink.stderr_lines[-1:])}")
        return on_host(stream_site), on_host(disk.image or disk.path), map_host
    finally:
        backend.close()
