"""Predicted WAN bytes and migration time per mode, from a VM's composition and the WAN.

A pure function, so the migrate dialog, the CLI and the benchmark agree on the estimate and a
test can pin it. It is a first-order model of QEMU precopy over a link:

* every guest page crosses the WAN once as a page record (4 KiB + an 8-byte header), except
  zero pages (a 9-byte record) — we take free memory as zero-filled, scaled by `free_zero_fraction`;
* RAM the guest kernel does not count in MemTotal (firmware, reserved, the kernel image) is sent
  as data when the VM's RAM size is given;
* pages dirtied while a round is sent are sent again: rounds shrink by dirty/link each time;
* `drop-cache` first turns the clean page cache into free memory;
* `zstd` sends non-zero pages compressed by `zstd_ratio`, no faster than zstd's CPU rate;
* `teleport` sends a small reference instead of each restorable page, and the destination reads
  those pages from its replica while the stream arrives (whichever is slower bounds the time).

The constants are estimates to be calibrated from lab records; the UI labels results "predicted".
"""

from __future__ import annotations

from dataclasses import dataclass

from pcteleport.records import PAGE_SIZE, Composition, Mode

PAGE_RECORD_BYTES = PAGE_SIZE + 8  # be64 offset|flags, then the page
ZERO_RECORD_BYTES = 9  # be64 offset|flags, then one fill byte
MAX_ROUNDS = 30  # QEMU keeps iterating; past this a migration that does not converge is stuck


@dataclass(frozen=True)
class PredictionModel:
    free_zero_fraction: float = 1.0  # share of free memory QEMU finds zero-filled
    zstd_ratio: float = 0.45  # compressed / raw size of non-zero guest pages
    zstd_bytes_per_s: float = 400e6  # guest bytes zstd compresses per second (multifd, 2 threads)
    teleport_ref_bytes: int = 16  # WAN bytes that stand in for one teleported page
    replica_read_bytes_per_s: float = 200e6  # destination replica read rate for restored pages
    dirty_rate_bytes_per_s: float = 0.0  # guest write rate during migration
    setup_s: float = 1.0  # libvirt prepare, destination QEMU start, resume
    setup_rtts: int = 8  # protocol round trips (libvirt begin/prepare/perform/finish, TCP, QEMU)


@dataclass(frozen=True)
class Prediction:
    mode: Mode
    wan_bytes: int
    seconds: float | None  # None when the link rate is unknown
    converges: bool = True  # False when the guest dirties memory faster than the link sends it


def predict(
    composition: Composition,
    mode: Mode,
    link_bytes_per_s: float | None,
    rtt_ms: float = 0.0,
    cap_bytes_per_s: float | None = None,
    model: PredictionModel = PredictionModel(),  # frozen, so sharing the default is safe
    ram_bytes: int | None = None,  # the VM's RAM as libvirt sees it (>= the guest's MemTotal)
) -> Prediction:
    c = composition
    free = c.free
    clean = c.cache_clean
    restorable = min(c.restorable, c.cache_clean)
    if mode is Mode.DROP_CACHE:
        free, clean, restorable = free + clean, 0, 0
    elif mode is not Mode.TELEPORT:
        restorable = 0

    zero_pages = int((max(0, free) // PAGE_SIZE) * model.free_zero_fraction)
    teleported_pages = (max(0, restorable) // PAGE_SIZE)
    total_pages = max(c.total, ram_bytes or 0) // PAGE_SIZE
    data_pages = max(0, total_pages - zero_pages - teleported_pages)

    data_bytes = data_pages * PAGE_RECORD_BYTES
    if mode is Mode.ZSTD:
        data_bytes = int(data_bytes * model.zstd_ratio)
    first_round = (
        data_bytes + zero_pages * ZERO_RECORD_BYTES + teleported_pages * model.teleport_ref_bytes
    )

    rate = link_bytes_per_s
    if rate is not None and cap_bytes_per_s is not None:
        rate = min(rate, cap_bytes_per_s)

    # Later rounds resend what the guest dirtied meanwhile, at the same WAN cost per guest byte.
    converges = True
    resent = 0.0
    if rate and model.dirty_rate_bytes_per_s > 0:
        guest_bytes_per_wan_byte = (total_pages * PAGE_SIZE) / max(first_round, 1)
        ratio = model.dirty_rate_bytes_per_s / (rate * guest_bytes_per_wan_byte)
        converges = ratio < 1.0
        round_bytes = float(first_round)
        for _ in range(MAX_ROUNDS):
            round_bytes *= min(ratio, 1.0)
            resent += round_bytes
            if round_bytes < PAGE_RECORD_BYTES:
                break
    wan_bytes = int(first_round + resent)

    if not rate:
        return Prediction(mode, wan_bytes, None, converges)
    seconds = wan_bytes / rate
    if mode is Mode.ZSTD:
        seconds = max(seconds, total_pages * PAGE_SIZE / model.zstd_bytes_per_s)
    if mode is Mode.TELEPORT and restorable:
        seconds = max(seconds, restorable / model.replica_read_bytes_per_s)
    seconds += model.setup_s + model.setup_rtts * rtt_ms / 1000.0
    return Prediction(mode, wan_bytes, seconds, converges)


def predict_all(
    composition: Composition,
    link_bytes_per_s: float | None,
    rtt_ms: float = 0.0,
    cap_bytes_per_s: float | None = None,
    model: PredictionModel = PredictionModel(),
    ram_bytes: int | None = None,
) -> list[Prediction]:
    return [
        predict(composition, mode, link_bytes_per_s, rtt_ms, cap_bytes_per_s, model, ram_bytes)
        for mode in Mode
    ]
