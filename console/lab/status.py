"""`lab status`: sites and their daemons, the WAN (profile, and rate/RTT measured right now),
and every VM with the site it runs at — as text for people or JSON for programs:
`{"sites": [{"name": …}, …], "vms": [{"name": …, "site": …, "state": …, "disks": [{"target":
"vda", "writable": true, "overlay": "/srv/vms/…/vda.qcow2", "base": "/srv/images/…raw", …}]},
…], "wan": {…}}`."""

from __future__ import annotations

import contextlib
import time
from typing import Any

import libvirt

from pcteleport.engine import version_text
from pcteleport.errors import PcteleportError
from pcteleport.lab import config, measure, shell, site, vms, wan
from pcteleport.lab.paths import LabPaths
from pcteleport.lab.topology import sites
from pcteleport.lab.wanprofiles import profile


def collect(paths: LabPaths | None = None, measure_wan: bool = True) -> dict[str, Any]:
    paths = paths or LabPaths.default()
    present = shell.netns_names()
    site_rows: list[dict[str, Any]] = []
    for s in sites():
        pids = site.site_pids(paths, s)
        entry: dict[str, Any] = {
            "name": s.name, "netns": s.netns, "up": s.netns in present and all(pids.values()),
            "mgmt_addr": s.mgmt_addr, "wan_addr": s.wan_addr,
            "libvirt_uri": config.libvirt_uri(paths, s), "daemons": pids,
            "libvirt_version": None, "qemu_version": None,
        }
        if pids["libvirtd"]:
            with contextlib.suppress(PcteleportError, libvirt.libvirtError):
                conn = vms.connect(paths, s)
                entry["libvirt_version"] = version_text(conn.getLibVersion())
                entry["qemu_version"] = version_text(conn.getVersion())
                conn.close()
        site_rows.append(entry)
    all_up = all(e["up"] for e in site_rows)
    vm_list = [v.as_dict() for v in vms.list_vms(paths)] if all_up else []
    st = wan.load_state(paths)
    wan_info: dict[str, Any] = {"up": all_up and st is not None}
    if st is not None:
        p = profile(st.profile)
        wan_info.update(mode=st.mode, profile=p.name, rate_mbit=p.rate_mbit, rtt_ms=p.rtt_ms,
                        delay_pid=shell.read_pid(paths.delay_pid))
        if measure_wan and wan_info["up"]:
            pid = wan_info["delay_pid"]
            cpu0, t0 = (measure.cpu_seconds(pid), time.monotonic()) if pid else (0.0, 0.0)
            wan_info["measured"] = measure.measure_wan().as_dict()
            if pid:
                cpu = (measure.cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
                wan_info["measured"]["delay_cpu_pct"] = round(cpu * 100, 1)
                wan_info["delay_line"] = wan.delay_stats(paths)
    return {"up": all_up, "state_dir": str(paths.root), "config": str(paths.sites_toml),
            "sites": site_rows, "vms": vm_list, "wan": wan_info}


def render(st: dict[str, Any]) -> str:
    lines = [f"lab: {'up' if st['up'] else 'down'}   state {st['state_dir']}"]
    for s in st["sites"]:
        d = s["daemons"]
        daemons = "  ".join(f"{k} {v or '-'}" for k, v in d.items())
        lines.append(f"site {s['name']:<6} {'up  ' if s['up'] else 'down'}  "
                     f"mgmt {s['mgmt_addr']}  wan {s['wan_addr']}  "
                     f"libvirt {s['libvirt_version'] or '-'}  "
                     f"qemu {s['qemu_version'] or '-'}  {daemons}")
    w = st["wan"]
    if "profile" in w:
        line = (f"wan  {w['profile']}: {w['rate_mbit']:g} Mbit/s, {w['rtt_ms']:g} ms RTT "
                f"({w['mode']} delay)")
        if "measured" in w:
            m = w["measured"]
            line += (f"   measured {m['rate_mbit']:.1f} Mbit/s, RTT {m['rtt_ms']:.1f} ms "
                     f"± {m['jitter_ms']:.2f} ms (p95)")
            if "delay_cpu_pct" in m:
                line += f", delay line {m['delay_cpu_pct']:.1f}% CPU"
            dl = w.get("delay_line")
            if dl:
                line += f", late ≤ {dl['late_max_us']:.0f} µs"
        lines.append(line)
    else:
        lines.append("wan  down")
    if st["vms"]:
        lines.append(f"{'vm':<12} {'site':<6} {'state':<9} {'memory':>7} vcpus")
        for v in st["vms"]:
            lines.append(f"{v['name']:<12} {v['site']:<6} {v['state']:<9} "
                         f"{v['memory_mib']:>4} MiB {v['vcpus']:>5}")
            for d in v.get("disks", []):
                kind = "writable" if d["writable"] else "read-only"
                layer = (f"overlay {d['overlay']} on {d['base']}" if d["overlay"]
                         else d["path"])
                lines.append(f"  {d['target']} {kind} {layer}")
    elif st["up"]:
        lines.append("no VMs")
    if st["up"]:
        lines.append(f"sites config: {st['config']}")
    else:
        lines.append("bring it up with `pcteleport lab up`")
    return "\n".join(lines)
