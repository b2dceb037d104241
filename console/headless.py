"""Headless commands on the configured sites: `vms`, `migrate`, `abort` (the console's twins),
`images` and `images sync` (the sites' image caches)."""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
import threading
from typing import Any

import libvirt

from pcteleport.backend import VERIFY_SAMPLE_PAGES, MigrationRequest
from pcteleport.errors import PcteleportError
from pcteleport.predict import caveats, predict, predict_all, t_min
from pcteleport.records import LogLine, Mode, PredictionInputs, Result, to_dict
from pcteleport.sites.backends import sites_config_candidates
from pcteleport.sites.libvirt.backend import LibvirtBackend


def open_backend() -> LibvirtBackend:
    found = next((p for p in sites_config_candidates() if p.is_file()), None)
    if found is None:
        raise PcteleportError("no sites configured: run `pcteleport lab up`, or write a "
                              "sites.toml (see console/sites/config.py)")
    return LibvirtBackend.from_config(found)


def list_vms(as_json: bool) -> int:
    backend = open_backend()
    try:
        rows: list[dict[str, Any]] = []
        problems = []
        sites = backend.sites()
        for site in sites:
            if site.error:
                problems.append(site.error)
                continue
            for vm in backend.vms(site.name):
                rows.append({"name": vm.name, "site": site.name, "state": str(vm.state),
                             "vcpus": vm.vcpus, "memory_bytes": vm.memory_bytes,
                             "uuid": vm.uuid})
        if as_json:
            print(json.dumps({"vms": rows, "problems": problems}))
        else:
            print(f"{'NAME':<16} {'SITE':<10} {'STATE':<10} {'VCPUS':>5} {'MEMORY':>10}  UUID")
            for r in rows:
                mem = f"{r['memory_bytes'] / 2**20:.0f} MiB"
                print(f"{r['name']:<16} {r['site']:<10} {r['state']:<10} {r['vcpus']:>5} "
                      f"{mem:>10}  {r['uuid']}")
            for p in problems:
                print(f"warning: {p}", file=sys.stderr)
        if len(problems) == len(sites):
            raise PcteleportError("no site answered: " + "; ".join(problems))
        return 0
    finally:
        backend.close()


def migrate(vm: str, to: str, mode: str, bandwidth_mib: float | None, as_json: bool,
            verify: str = "sample", auto_converge: bool = False, force: bool = False,
            compare_ram: bool = False, insecure: bool = False, predict: bool = True) -> int:
    try:
        mode_v = Mode(mode)
    except ValueError:
        raise PcteleportError(f"unknown mode '{mode}': use one of "
                              f"{', '.join(m.value for m in Mode)}") from None
    backend = open_backend()
    request = MigrationRequest(vm, to, mode_v,
                               bandwidth_mib * 2**20 if bandwidth_mib else None,
                               verify_pages=0 if verify == "full" else VERIFY_SAMPLE_PAGES,
                               auto_converge=auto_converge, force=force,
                               compare_ram=compare_ram, insecure=insecure)

    try:  # before the start: a disk whose base keeps teleport off (the run still goes)
        warnings = backend.disk_warnings(vm, to)
    except PcteleportError:
        warnings = []  # the migration itself says why it cannot start
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr if as_json else sys.stdout, flush=True)
    if predict:  # measured before the start, so the record can keep it beside the run
        try:
            inputs = _measure(backend, vm, to, request.bandwidth_cap_bytes_per_s,
                              auto_converge, sys.stderr if as_json else sys.stdout)
        except KeyboardInterrupt:  # the measurement's own helpers stop in its finally blocks
            where = backend.runs_at(vm)
            backend.close()
            print(f"pcteleport: interrupted while measuring, before the migration started: "
                  f"nothing was started; VM {vm} is running at {where}", file=sys.stderr)
            return 130
        request = dataclasses.replace(request, prediction_inputs=inputs)

    def on_event(event: object) -> None:
        if isinstance(event, LogLine):
            out = sys.stderr if as_json else sys.stdout
            out.write(event.text + "\n")  # one write: lines come from more than one thread
            out.flush()

    aborting = threading.Event()

    def on_sigint(_sig: int, _frame: object) -> None:
        if aborting.is_set():
            raise KeyboardInterrupt
        aborting.set()
        print("aborting the migration (Ctrl-C again to stop waiting)...", file=sys.stderr)
        threading.Thread(target=backend.abort, args=(vm,), daemon=True).start()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        record = backend.migrate(request, on_event)
    finally:
        signal.signal(signal.SIGINT, previous)
        backend.close()
    if as_json:
        print(json.dumps(record.summary()))
    elif record.result is not Result.OK:
        print(f"pcteleport: migration {record.result}: {record.error}", file=sys.stderr)
    return 0 if record.result is Result.OK else 1


def _measure(backend: LibvirtBackend, vm: str, to: str, cap: float | None,
             auto_converge: bool, out: Any) -> PredictionInputs | None:
    print("measuring before the start (composition, restorable maps, RAM sample, dirty rate;"
          " --no-predict skips it)...", file=out, flush=True)
    try:
        inputs = backend.prediction_inputs(vm, to, cap, auto_converge)
    except PcteleportError as exc:
        print(f"warning: no prediction: {exc}", file=out, flush=True)
        return None
    for p in inputs.problems:
        print(f"warning: prediction: {p}", file=out, flush=True)
    pred = predict(inputs, Mode.TELEPORT)  # only to say the limit; the mode's own comes later
    tmin = t_min(inputs)
    print(f"measured in {inputs.took_s:.1f} s; T_min "
          + (f"{tmin:.1f} s" if tmin is not None else "unknown")
          + (f", teleport predicted {pred.wan_bytes / 2**20:.1f} MiB" if pred else ""),
          file=out, flush=True)
    return inputs


def prediction_summary(vm: str, to: str, inputs: PredictionInputs) -> dict[str, Any]:
    """`migrate --dry-run --json`: per mode what it would send and take, and T_min."""
    return {
        "vm": vm, "to": to, "dry_run": True,
        "t_min_s": t_min(inputs),
        "modes": [{"mode": str(p.mode), "predicted_wan_bytes": p.wan_bytes,
                   "predicted_total_s": p.total_s,
                   "predicted_memory_wan_bytes": p.memory_wan_bytes,
                   "predicted_disk_wan_bytes": p.disk_wan_bytes,
                   "converges": p.converges} for p in predict_all(inputs)],
        "caveats": caveats(inputs),
        "inputs": to_dict(inputs),
    }


def dry_run(vm: str, to: str, bandwidth_mib: float | None, as_json: bool,
            auto_converge: bool = False) -> int:
    """Measure the VM and print the prediction per mode; nothing starts."""
    backend = open_backend()
    try:
        inputs = backend.prediction_inputs(vm, to, bandwidth_mib * 2**20 if bandwidth_mib
                                           else None, auto_converge)
        warnings = backend.disk_warnings(vm, to)
    finally:
        backend.close()
    out = prediction_summary(vm, to, inputs)
    if as_json:
        for w in [*warnings, *(f"prediction: {p}" for p in inputs.problems)]:
            print(f"warning: {w}", file=sys.stderr)
        print(json.dumps(out))
        return 0
    for w in [*warnings, *(f"prediction: {p}" for p in inputs.problems)]:
        print(f"warning: {w}")
    tmin = out["t_min_s"]
    print(f"{vm} -> {to}: measured in {inputs.took_s:.1f} s; nothing was started")
    print(f"T_min (the physical limit): {'unknown' if tmin is None else f'{tmin:.1f} s'}")
    print(f"{'MODE':<11} {'WAN':>11} {'TIME':>9} {'x T_min':>8}")
    for m in out["modes"]:
        secs = m["predicted_total_s"]
        ratio = f"{secs / tmin:.2f}" if secs is not None and tmin else "-"
        time_txt = "-" if secs is None else f"{secs:.1f} s"
        note = "" if m["converges"] else "  may not converge"
        print(f"{m['mode']:<11} {m['predicted_wan_bytes'] / 2**20:>7.1f} MiB {time_txt:>9} "
              f"{ratio:>8}{note}")
    for c in out["caveats"]:
        print(f"note: {c}")
    return 0


def abort(vm: str) -> int:
    """Abort a migration another process runs: libvirt's abortJob on the source domain."""
    backend = open_backend()
    try:
        for rt in backend.sites_rt.values():
            dom = rt.find_domain(vm)
            if dom is None or not dom.isActive():
                continue
            try:
                if dom.jobInfo()[0] == libvirt.VIR_DOMAIN_JOB_NONE:
                    continue
                dom.abortJob()
            except libvirt.libvirtError:
                continue
            print(f"asked libvirt at {rt.name} to abort the migration of {vm}")
            return 0
        raise PcteleportError(f"no migration of {vm} is running at any site")
    finally:
        backend.close()


def list_images(verify: bool, as_json: bool) -> int:
    backend = open_backend()
    try:
        found = backend.images(verify)
    finally:
        backend.close()
    if as_json:
        print(json.dumps({"images": [
            {"site": i.site, "name": i.name, "size_bytes": i.size_bytes,
             "allocated_bytes": i.allocated_bytes, "sha256": i.sha256, "checksum": i.checksum}
            for i in found]}))
        return 0
    sites = sorted({i.site for i in found}, key=lambda s: [r.name for r in
                                                           backend.cfg.sites].index(s))
    by_name: dict[str, dict[str, Any]] = {}
    for i in found:
        by_name.setdefault(i.name, {})[i.site] = i
    print(f"{'IMAGE':<44} {'SIZE':>10}  {'SHA-256':<16}  " + "  ".join(
        f"{s:<8}" for s in sites))
    for name, at in sorted(by_name.items()):
        ref = next(iter(at.values()))
        digests = {i.sha256 for i in at.values()}
        cells = []
        for s in sites:
            i = at.get(s)
            cells.append("-" if i is None else "ok" if len(digests) == 1 and i.sha256
                         else i.checksum if not i.sha256 else "differs")
        print(f"{name:<44} {ref.size_bytes / 2**20:>6.0f} MiB  {(ref.sha256 or '?')[:16]:<16}  "
              + "  ".join(f"{c:<8}" for c in cells))
    if not found:
        print("no base images at any site")
    return 0


def sync_image(image: str, to: str, from_site: str | None) -> int:
    """`images sync`: copy a base image to a site that lacks it, from one that holds it."""
    from pcteleport.sites import images

    backend = open_backend()
    try:
        dst = backend._site(to)
        sources = ([backend._site(from_site)] if from_site
                   else [rt for rt in backend.sites_rt.values() if rt is not dst])
        src = None
        for rt in sources:
            path = image if image.startswith("/") else f"{rt.config.image_dir}/{image}"
            if images.scan(rt, [path]):
                src = rt
                break
        if src is None:
            where = from_site or "any other site"
            raise PcteleportError(f"no image {image} at {where} to copy from")
        print(f"copying {image} from {src.name} to {to} over the WAN", flush=True)
        result = images.sync(image, src, dst, progress=lambda m: print(m, flush=True))
    finally:
        backend.close()
    if result.already:
        print(f"{to} holds {result.image} already (same checksum): nothing copied")
    else:
        kept = f", {result.resumed_from / 2**20:.1f} MiB kept from an earlier copy" \
            if result.resumed_from else ""
        print(f"{result.image} is at {to}, verified: {result.wire_bytes / 2**20:.1f} MiB over "
              f"the WAN in {result.seconds:.1f} s{kept}")
    return 0
