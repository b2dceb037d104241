"""The `pcteleport` command: argument parsing and dispatch only.

Each subcommand's work lives in the room that owns it (teleport/, sites/, ui/); this
module only parses arguments and turns known errors into one clear line.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence

from pcteleport import __version__
from pcteleport.errors import PcteleportError

Handler = Callable[[argparse.Namespace], int]


def positive_number(text: str) -> float:
    """An argparse type: a finite number above 0 (a rate, a cap)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number above 0")
    return value


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1 (a count)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give 1 or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pcteleport",
        description="Wide-area live migration with page cache teleportation.",
    )
    parser.add_argument("--version", action="version", version=f"pcteleport {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_codec(sub)
    _add_relay(sub)
    _add_guest_ram(sub)
    _add_qemu_cpu(sub)
    _add_replay(sub)
    _add_lab(sub)
    _add_sites(sub)
    _add_images(sub)
    _add_bench(sub)
    return parser


# --- codec -------------------------------------------------------------------------------


def _add_codec(sub: argparse._SubParsersAction) -> None:
    codec = sub.add_parser("codec", help="encode, decode and inspect migration streams offline")
    csub = codec.add_subparsers(dest="codec_command", metavar="ACTION", required=True)

    enc = csub.add_parser("encode", help="QEMU stream -> teleport WAN stream")
    enc.add_argument("--map", required=True, help="restorable map (extent text or binary form)")
    enc.add_argument("--disk", required=True, help="the source's disk image the map refers to")
    enc.add_argument("input", help="QEMU migration stream ('-' for stdin)")
    enc.add_argument("output", help="WAN stream ('-' for stdout)")
    enc.set_defaults(handler=_codec_encode)

    dec = csub.add_parser("decode", help="teleport WAN stream -> QEMU stream")
    dec.add_argument("--disk", required=True, help="the destination's replica of the disk image")
    dec.add_argument("input", help="WAN stream ('-' for stdin)")
    dec.add_argument("output", help="QEMU migration stream ('-' for stdout)")
    dec.set_defaults(handler=_codec_decode)

    st = csub.add_parser("stats", help="what a QEMU or WAN stream holds")
    st.add_argument("file", help="a QEMU migration stream or a teleport WAN stream")
    st.add_argument("--json", action="store_true", help="print JSON instead of a table")
    st.set_defaults(handler=_codec_stats)


def _codec_encode(args: argparse.Namespace) -> int:
    from pcteleport.teleport import offline

    return offline.encode_file(args.map, args.disk, args.input, args.output)


def _codec_decode(args: argparse.Namespace) -> int:
    from pcteleport.teleport import offline

    return offline.decode_file(args.disk, args.input, args.output)


def _codec_stats(args: argparse.Namespace) -> int:
    from pcteleport.teleport import offline

    return offline.stats_file(args.file, as_json=args.json)


# --- relay -------------------------------------------------------------------------------


def _add_relay(sub: argparse._SubParsersAction) -> None:
    relay = sub.add_parser("relay", help="run one end of a teleport migration stream")
    rsub = relay.add_subparsers(dest="relay_command", metavar="END", required=True)

    send = rsub.add_parser("send", help="source end: QEMU -> encoder -> WAN")
    send.add_argument("--listen", required=True, metavar="H:P", help="where QEMU connects")
    send.add_argument("--to", required=True, metavar="H:P", help="the destination relay")
    send.add_argument("--map", help="restorable map; '-' reads it from stdin (after the secret,"
                      " if that comes on stdin too) once listening; without it every page is sent")
    send.add_argument("--map-updates", action="store_true",
                      help="stdin carries 'MAP <length>' framed maps: the first, then refreshes "
                      "merged while the stream runs (with --map -)")
    send.add_argument("--disk", action="append",
                      help="the source's disk image the map refers to; again for each further "
                           "disk (the map's offsets of disk i are (i << 48) | offset)")
    send.add_argument("--secret-file",
                      help="file holding this migration's shared secret ('-': stdin's first line)")
    send.add_argument("--stats-interval", type=float, default=1.0, metavar="S")
    send.add_argument("--insecure", action="store_true",
                      help="frames authenticated but NOT encrypted (for comparison only)")
    send.add_argument("--once", action="store_true", default=True, help=argparse.SUPPRESS)
    send.set_defaults(handler=_relay_send)

    recv = rsub.add_parser("recv", help="destination end: WAN -> decoder -> QEMU")
    recv.add_argument(
        "--listen", required=True, metavar="H:P", help="where the source relay connects"
    )
    recv.add_argument("--to", required=True, metavar="H:P", help="the destination QEMU's -incoming")
    recv.add_argument("--disk", action="append",
                      help="the destination's replica of the disk image; again for each "
                           "further disk, in the source's order")
    recv.add_argument(
        "--on-mismatch", choices=["fail", "fetch"], default="fail",
        help="a replica block that differs from the source: fail the migration (default), "
             "or fetch the page from the source over the back channel",
    )
    recv.add_argument("--secret-file",
                      help="file holding this migration's shared secret ('-': stdin's first line)")
    recv.add_argument("--stats-interval", type=float, default=1.0, metavar="S")
    recv.add_argument("--insecure", action="store_true",
                      help="frames authenticated but NOT encrypted (for comparison only)")
    recv.add_argument("--wait", type=positive_number, default=600.0, metavar="S",
                      help="give up when no source relay has authenticated after S seconds "
                      "(default 600)")
    recv.set_defaults(handler=_relay_recv)

    # teleport's disk copy (NBD) over the WAN, encrypted like the stream (teleport/tunnel.py)
    for end, listen, to in (("tunnel-in", "unix:/PATH", "H:P"), ("tunnel-out", "H:P",
                                                                 "unix:/PATH")):
        tun = rsub.add_parser(end, help=f"{'source' if end == 'tunnel-in' else 'destination'} "
                              "end of the encrypted tunnel teleport's NBD disk copy takes")
        tun.add_argument("--listen", required=True, metavar=listen)
        tun.add_argument("--to", required=True, metavar=to)
        tun.add_argument("--secret-file", required=True,
                         help="file holding this migration's shared secret ('-': stdin's "
                              "first line)")
        tun.add_argument("--insecure", action="store_true",
                         help="frames authenticated but NOT encrypted (for comparison only)")
        if end == "tunnel-in":
            tun.add_argument("--owner", metavar="USER:GROUP",
                             help="the socket's owner: the source QEMU's user (libvirt's DAC "
                                  "label, e.g. +64055:+64055); default root")
        tun.set_defaults(handler=_relay_tunnel)


def _relay_send(args: argparse.Namespace) -> int:
    from pcteleport.teleport import relay

    return relay.main_send(args)


def _relay_tunnel(args: argparse.Namespace) -> int:
    from pcteleport.teleport import tunnel

    return tunnel.main(args)


def _relay_recv(args: argparse.Namespace) -> int:
    from pcteleport.teleport import relay

    return relay.main_recv(args)


def _add_guest_ram(sub: argparse._SubParsersAction) -> None:
    ram = sub.add_parser("guest-ram", help="read a local VM's RAM for a RAM check (site host)")
    rsub = ram.add_subparsers(dest="ram_command", metavar="ACTION", required=True)
    serve = rsub.add_parser("serve", help="hold the VM's RAM open; answer digest and page "
                            "requests (JSON lines on stdin/stdout)")
    serve.add_argument("--vm", required=True, help="the libvirt domain's name on this host")
    serve.add_argument("--pid", type=int, help="its QEMU process (default: libvirt's pid file)")
    serve.set_defaults(handler=_guest_ram_serve)


def _guest_ram_serve(args: argparse.Namespace) -> int:
    from pcteleport.sites.libvirt import ramcheck

    return ramcheck.serve(args.vm, args.pid)


def _add_qemu_cpu(sub: argparse._SubParsersAction) -> None:
    cpu = sub.add_parser("qemu-cpu", help="a local VM's QEMU threads' CPU during a migration "
                         "(site host)")
    csub = cpu.add_subparsers(dest="cpu_command", metavar="ACTION", required=True)
    watch = csub.add_parser("watch", help="read the QEMU's threads' CPU until stdin ends; "
                            "answer 'report' lines (JSON lines on stdout)")
    watch.add_argument("--vm", required=True, help="the libvirt domain's name on this host")
    watch.add_argument("--wait", type=positive_number, default=600.0, metavar="S",
                       help="give up when no QEMU of the VM ran within S seconds (default 600)")
    watch.set_defaults(handler=_qemu_cpu_watch)


def _qemu_cpu_watch(args: argparse.Namespace) -> int:
    from pcteleport.sites.libvirt import proc_cpu

    return proc_cpu.watch(args.vm, args.wait)


# --- console -----------------------------------------------------------------------------


def _add_replay(sub: argparse._SubParsersAction) -> None:
    replay = sub.add_parser("replay", help="play recorded migrations back in the console")
    replay.add_argument("files", nargs="+", metavar="FILE",
                        help="migration record (JSON), or a folder of them")
    replay.add_argument("--speed", type=float, default=1.0, metavar="N",
                        help="play N times faster than recorded (default 1)")
    replay.set_defaults(handler=_replay)


def _replay(args: argparse.Namespace) -> int:
    from pcteleport.ui import launch

    return launch.run_replay(args.files, args.speed)


def _console(_: argparse.Namespace) -> int:
    from pcteleport.ui import launch

    return launch.run_configured()


# --- lab ---------------------------------------------------------------------------------


def _add_lab(sub: argparse._SubParsersAction) -> None:
    lab = sub.add_parser("lab", help="the embedded two-site lab (tokyo, osaka) on this host")
    lsub = lab.add_subparsers(dest="lab_command", metavar="ACTION", required=True)

    up = lsub.add_parser("up", help="bring the lab up (idempotent)")
    up.add_argument("--vms", type=lambda s: [v for v in s.split(",") if v], metavar="A,B",
                    help="scenarios to add at tokyo (a fresh lab gets web,tpcc,idle; an up "
                    "lab keeps the VMs it has)")
    up.add_argument("--wan", metavar="PROFILE", help="WAN profile (default, fast, slow)")
    up.set_defaults(handler=_lab_up)

    down = lsub.add_parser("down", help="stop the lab and remove its namespaces")
    down.set_defaults(handler=_lab_down)

    st = lsub.add_parser("status", help="sites, daemons, WAN (measured) and VMs")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.add_argument("--no-measure", action="store_true", help="skip the WAN measurement")
    st.set_defaults(handler=_lab_status)

    ssh = lsub.add_parser("ssh", help="log in to a site host (or run CMD there)")
    ssh.add_argument("site", metavar="SITE")
    ssh.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD")
    ssh.set_defaults(handler=_lab_ssh)

    wan = lsub.add_parser("wan", help="switch the WAN profile live")
    wan.add_argument("profile", metavar="PROFILE", help="default, fast or slow")
    wan.set_defaults(handler=_lab_wan)


def _lab_up(args: argparse.Namespace) -> int:
    from pcteleport.lab import commands

    return commands.up(args.vms, args.wan)


def _lab_down(args: argparse.Namespace) -> int:
    from pcteleport.lab import commands

    return commands.down()


def _lab_status(args: argparse.Namespace) -> int:
    from pcteleport.lab import commands

    return commands.show_status(args.json, not args.no_measure)


def _lab_ssh(args: argparse.Namespace) -> int:
    from pcteleport.lab import commands

    return commands.ssh(args.site, args.cmd)


def _lab_wan(args: argparse.Namespace) -> int:
    from pcteleport.lab import commands

    return commands.set_wan(args.profile)


# --- sites: vms, migrate, abort ------------------------------------------------------------


def _add_sites(sub: argparse._SubParsersAction) -> None:
    vms = sub.add_parser("vms", help="list the VMs of every configured site")
    vms.add_argument("--json", action="store_true", help="print JSON")
    vms.set_defaults(handler=_vms)

    mig = sub.add_parser("migrate", help="live-migrate a VM to another site (headless)")
    mig.add_argument("vm", help="VM name or UUID")
    mig.add_argument("--to", required=True, metavar="SITE", help="destination site")
    mig.add_argument("--mode", default="teleport",
                     choices=["stock", "drop-cache", "zstd", "teleport"])
    mig.add_argument("--bandwidth", type=positive_number, metavar="MiB/s",
                     help="cap the migration rate")
    mig.add_argument("--auto-converge", action="store_true",
                     help="let QEMU throttle the guest's vCPUs if it dirties memory faster than"
                          " the link carries it (libvirt's auto-converge)")
    mig.add_argument("--verify", choices=["sample", "full"], default="sample",
                     help="after the move the guest compares cached pages with its disk: "
                          "1024 pages of files drawn at random (default), or every "
                          "cached page (slow in TCG)")
    mig.add_argument("--json", action="store_true",
                     help="progress on stderr; the last stdout line is a JSON summary")
    mig.add_argument("--force", action="store_true",
                     help="migrate even where the engine is known to corrupt this guest "
                          "(a TCG guest on QEMU < 9.0)")
    mig.add_argument("--compare-ram", action="store_true",
                     help="keep the destination paused until its RAM was compared page by page"
                          " with the source's at the switch-over (needs memfd-backed RAM)")
    mig.add_argument("--insecure", action="store_true",
                     help="do NOT encrypt on the WAN (for comparison only; the record says "
                          "so): no libvirt TLS for memory and disks; teleport's relays "
                          "authenticate their frames but send them in clear")
    mig.add_argument("--dry-run", action="store_true",
                     help="start nothing: measure the VM now and print, per mode, the predicted "
                          "WAN bytes and total time, and T_min (the physical limit)")
    mig.add_argument("--no-predict", action="store_true",
                     help="skip the measurements before the start (the record then keeps no "
                          "prediction)")
    mig.set_defaults(handler=_migrate)

    ab = sub.add_parser("abort", help="abort the running migration of a VM")
    ab.add_argument("vm", help="VM name or UUID")
    ab.set_defaults(handler=_abort)


def _vms(args: argparse.Namespace) -> int:
    from pcteleport import headless as commands

    return commands.list_vms(args.json)


def _migrate(args: argparse.Namespace) -> int:
    from pcteleport import headless as commands

    if args.dry_run:
        return commands.dry_run(args.vm, args.to, args.bandwidth, args.json,
                                args.auto_converge)
    return commands.migrate(args.vm, args.to, args.mode, args.bandwidth, args.json,
                            args.verify, args.auto_converge, args.force, args.compare_ram,
                            args.insecure, predict=not args.no_predict)


def _abort(args: argparse.Namespace) -> int:
    from pcteleport import headless as commands

    return commands.abort(args.vm)


# --- images: the sites' image caches ------------------------------------------------------


def _add_images(sub: argparse._SubParsersAction) -> None:
    images = sub.add_parser("images", help="base images in each site's image cache (size, "
                            "checksum); `images sync` copies a missing one over the WAN")
    images.add_argument("--verify", action="store_true",
                        help="read every image's bytes again instead of trusting its checksum "
                             "file")
    images.add_argument("--json", action="store_true", help="print JSON")
    images.set_defaults(handler=_images_list)
    isub = images.add_subparsers(dest="images_command", metavar="ACTION")
    sync = isub.add_parser("sync", help="copy a base image to a site that lacks it, over the "
                           "WAN (resumable, verified by its checksum)")
    sync.add_argument("image", help="the image's name in the cache (or its path)")
    sync.add_argument("--to", required=True, metavar="SITE", help="the site to copy it to")
    sync.add_argument("--from", dest="from_site", metavar="SITE",
                      help="the site to copy it from (default: one that holds it)")
    sync.set_defaults(handler=_images_sync)
    # What the console runs on site hosts (over SSH): not for operators.
    scan = isub.add_parser("host-scan", help=argparse.SUPPRESS)
    scan.add_argument("paths", nargs="*")
    scan.add_argument("--dir")
    scan.add_argument("--verify", action="store_true")
    scan.add_argument("--json", action="store_true")
    scan.set_defaults(handler=_images_host_scan)
    recv = isub.add_parser("host-recv", help=argparse.SUPPRESS)
    for flag in ("--dir", "--name", "--sha256", "--listen", "--secret-file"):
        recv.add_argument(flag, required=True)
    recv.add_argument("--size", type=int, required=True)
    recv.set_defaults(handler=_images_host_recv)
    send = isub.add_parser("host-send", help=argparse.SUPPRESS)
    for flag in ("--image", "--to", "--secret-file"):
        send.add_argument(flag, required=True)
    send.set_defaults(handler=_images_host_send)


def _images_list(args: argparse.Namespace) -> int:
    from pcteleport import headless

    return headless.list_images(args.verify, args.json)


def _images_sync(args: argparse.Namespace) -> int:
    from pcteleport import headless

    return headless.sync_image(args.image, args.to, args.from_site)


def _images_host_scan(args: argparse.Namespace) -> int:
    from pcteleport import imagecache

    return imagecache.main_scan(args.dir, args.paths, args.verify)


def _images_host_recv(args: argparse.Namespace) -> int:
    from pcteleport import imagecache

    return imagecache.main_recv(args.dir, args.name, args.sha256, args.size, args.listen,
                                args.secret_file)


def _images_host_send(args: argparse.Namespace) -> int:
    from pcteleport import imagecache

    return imagecache.main_send(args.image, args.to, args.secret_file)


# --- bench -------------------------------------------------------------------------------


def _add_bench(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="measure: migrations side by side, or the codec")
    # Without WHAT: every mode migrates the scenario's VM, interleaved (console/bench/runner.py).
    bench.add_argument("--scenario", default="web", help="scenario / lab VM (default web)")
    bench.add_argument("--modes", default="stock,drop-cache,zstd,teleport", metavar="A,B")
    bench.add_argument("--wan", default="default", metavar="PROFILE",
                       help="WAN profile of the measured migrations (default, fast, slow)")
    bench.add_argument("--return-wan", default="fast", metavar="PROFILE",
                       help="WAN profile for bringing the VM home between runs (default fast)")
    bench.add_argument("--repeat", type=positive_int, default=1, metavar="N",
                       help="rounds (default 1)")
    bench.add_argument("--before", type=float, default=10.0, metavar="S",
                       help="seconds measured before each migration (default 10)")
    bench.add_argument("--after", type=float, default=40.0, metavar="S",
                       help="seconds measured after each migration (default 40)")
    bench.add_argument("--max-downtime", type=int, default=1000, metavar="MS",
                       help="QEMU downtime limit for every mode (default 1000; 0: QEMU's own)")
    bench.add_argument("--auto-converge", action=argparse.BooleanOptionalAction, default=None,
                       help="libvirt's auto-converge for every mode (default: as the scenario "
                            "says in [bench])")
    bench.add_argument("--out", default="results", metavar="DIR",
                       help="results root; files go to DIR/<date>/ (default results)")
    bench.add_argument("--json", action="store_true", help="print JSON instead of the table")
    bench.add_argument("--report", metavar="FILE.json",
                       help="no run: write the table and figures of a run's JSON again")
    bench.add_argument("--repredict", nargs="+", metavar="FILE.json",
                       help="no run: each run's prediction again, from the inputs its record "
                            "kept, with the current model, beside the one it had and what it "
                            "measured")
    bench.add_argument("--force", action="store_true",
                       help="run even on an engine known to corrupt the guest (TCG on QEMU < 9)")
    bench.add_argument("--insecure", action="store_true",
                       help="every mode in clear on the WAN (no libvirt TLS, relays' frames "
                            "unencrypted): run once with and once without to see what "
                            "encryption costs")
    bench.add_argument("--encryption-cost", action="store_true",
                       help="every mode twice per round, encrypted and in clear, side by side "
                            "in this run, with the CPU of the processes carrying each migration "
                            "at each site")
    bench.set_defaults(handler=_bench_migrations)
    bsub = bench.add_subparsers(dest="bench_command", metavar="WHAT")
    codec = bsub.add_parser("codec", help="codec speed and WAN bytes on a captured stream")
    codec.add_argument("--stream", help="a QEMU migration stream (captured with --vm if absent)")
    codec.add_argument("--disk", help="the disk image the map refers to")
    codec.add_argument("--map", help="the restorable map taken with the stream")
    codec.add_argument("--vm", default="web-small",
                       help="capture stream and map from this lab VM (default web-small)")
    codec.add_argument("--repeat", type=positive_int, default=3,
                       help="best of N runs (default 3)")
    codec.add_argument("--level", type=int, default=1,
                       help="zstd level of the DATA frames (default 1, the relays'; negative "
                       "levels trade WAN bytes for encoder CPU)")
    codec.add_argument("--json", action="store_true", help="print JSON")
    codec.set_defaults(handler=_bench_codec)
    soak = bsub.add_parser("soak", help="migrate one VM back and forth, run after run, and "
                           "stop at the first failure")
    soak.add_argument("--vm", required=True, help="the VM (it runs at one of two sites)")
    soak.add_argument("--modes", default="teleport,stock", metavar="A,B",
                      help="modes taking turns (default teleport,stock)")
    soak.add_argument("--runs", type=positive_int, default=20, metavar="N",
                      help="migrations (default 20)")
    soak.add_argument("--compare-ram", action="store_true",
                      help="compare guest RAM page by page across every switch-over")
    soak.add_argument("--wan", default="fast", metavar="PROFILE",
                      help="lab WAN profile during the soak (default fast; 'keep' leaves it)")
    soak.add_argument("--no-workload", action="store_true",
                      help="no memwriter in the guest (lab VMs get one by default)")
    soak.add_argument("--writer", default="64:4", metavar="MIB:RATE",
                      help="memwriter's buffer (MiB) and rewrite rate (MiB/s); default 64:4")
    soak.add_argument("--hot", type=int, default=8, metavar="MIB",
                      help="memwriter's hot buffer, written over and over (default 8; 0: none)")
    soak.add_argument("--out", default="results", metavar="DIR",
                      help="results root; files go to DIR/<date>/ (default results)")
    soak.add_argument("--force", action="store_true",
                      help="soak even on an engine known to corrupt the guest (to show it)")
    soak.set_defaults(handler=_bench_soak)


def _bench_migrations(args: argparse.Namespace) -> int:
    from pcteleport.bench import runner

    if args.report:
        from pathlib import Path

        from pcteleport.bench import report

        print(report.rerender(Path(args.report)).read_text())
        return 0
    if args.repredict:
        from pathlib import Path

        from pcteleport.bench import repredict

        print(repredict.table(repredict.repredict_files([Path(p) for p in args.repredict])),
              end="")
        return 0
    command = "pcteleport " + " ".join(sys.argv[1:])
    return runner.main(args.scenario, args.modes, args.wan, args.repeat, args.json, args.out,
                       args.before, args.after, args.return_wan, command, args.max_downtime,
                       args.auto_converge, args.force, args.insecure,
                       encryption_cost=args.encryption_cost)


def _bench_soak(args: argparse.Namespace) -> int:
    from pcteleport.bench import soak

    command = "pcteleport " + " ".join(sys.argv[1:])
    return soak.main(args.vm, args.modes, args.runs, args.compare_ram,
                     None if args.wan == "keep" else args.wan, args.out, command, args.force,
                     not args.no_workload, args.writer, args.hot)


def _bench_codec(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pcteleport.bench import codec

    if not (args.stream and args.disk and args.map):
        from pcteleport.bench import capture

        if args.stream or args.disk or args.map:
            raise PcteleportError("give all of --stream, --disk and --map, or none (capture)")
        args.stream, args.disk, args.map = capture.capture_from_lab(args.vm)
    result = codec.run(Path(args.stream), Path(args.disk), Path(args.map), args.repeat,
                       args.level)
    print(codec.report(result, args.json))
    return 0


# --- entry point -------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # No subcommand opens the console on the configured sites.
    handler: Handler = getattr(args, "handler", None) or _console
    try:
        return handler(args)
    except PcteleportError as exc:
        print(f"pcteleport: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pcteleport: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
