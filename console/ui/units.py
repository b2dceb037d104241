"""Every number the console shows goes through here (humanize underneath), so units agree."""

from __future__ import annotations

import humanize


def size(n: float | None) -> str:
    """Memory and disk sizes in binary units: 1.0 GiB."""
    if n is None:
        return "–"
    return humanize.naturalsize(n, binary=True, format="%.1f").replace("Bytes", "B")


def rate(bytes_per_s: float | None) -> str:
    """Guest-memory rates: MiB/s, as QEMU reports them."""
    return "–" if bytes_per_s is None else f"{size(bytes_per_s)}/s"


def link_rate(bytes_per_s: float | None) -> str:
    """WAN rates in bits per second, as links are sold and profiled: 100 Mbit/s."""
    if bytes_per_s is None:
        return "–"
    if bytes_per_s <= 0:
        return "0 bit/s"
    return humanize.metric(bytes_per_s * 8, "bit/s", precision=3)


def count(n: int) -> str:
    return humanize.intcomma(n)


def percent(share: float | None) -> str:
    return "–" if share is None else f"{share * 100:.0f}%"


def millis(ms: float | None) -> str:
    if ms is None:
        return "–"
    return f"{ms / 1000:.2f} s" if ms >= 10_000 else f"{ms:.0f} ms"


def seconds(s: float | None) -> str:
    """Short durations for tables and ETAs: 9.4 s, 2 min 05 s, 1 h 02 min."""
    if s is None:
        return "–"
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(round(s), 60)
    if m < 60:
        return f"{m} min {sec:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def ago(s: float) -> str:
    """How long ago, in words: 'a minute ago'."""
    return humanize.naturaltime(s)


def parse_cap(text: str) -> float | None:
    """A bandwidth cap as typed by an operator, in bits/s with an SI prefix: '100M', '1.5G',
    '800k', '100mbit'. Empty means no cap. Returns bytes per second."""
    t = text.strip().lower().removesuffix("/s").removesuffix("bps").removesuffix("bit")
    if not t:
        return None
    scale = {"k": 1e3, "m": 1e6, "g": 1e9}
    factor = 1.0
    if t[-1] in scale:
        factor, t = scale[t[-1]], t[:-1]
    try:
        value = float(t) * factor
    except ValueError:
        raise ValueError(f"{text!r} is not a rate: write e.g. 100M for 100 Mbit/s") from None
    if value <= 0:
        raise ValueError("a bandwidth cap must be above 0 (leave it empty for none)")
    return value / 8
