"""What a relay reports: one JSON object per line on its stdout, typed on both sides.

The relay (`relay.py`) writes these events with `encode`; the service that started it over SSH
(`sites/libvirt/relays.py`) reads them back with `decode`. The wire form is flat JSON:
``{"event": NAME, "role": "send"|"recv", "t": seconds since the relay started, **fields}``,
with a counters event's `CodecCounters` fields at the top level.

Invariant: `decode(encode(e)) == e` for every event; a line that is not one of ours (not JSON, an
unknown event name from a newer relay, a field of the wrong type) decodes to None, never raises:
a relay's output must not take the migration watching it down.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pcteleport.teleport.counters import CodecCounters


@dataclass(frozen=True)
class RelayEvent:
    NAME: ClassVar[str] = ""
    role: str = field(default="", kw_only=True)  # "send" or "recv", stamped by the emitter
    t: float = field(default=0.0, kw_only=True)  # seconds since the relay started


@dataclass(frozen=True)
class Listening(RelayEvent):
    """The relay listens (and may be connected to); its pid is the one to signal. `cpu_s`:
    the CPU seconds its process had used by then (its start-up: interpreter, imports), so what
    it uses for the migration is told apart; 0 from a relay too old to say."""

    NAME: ClassVar[str] = "listening"
    address: str
    pid: int
    cpu_s: float = 0.0


@dataclass(frozen=True)
class MapLoaded(RelayEvent):
    """The send relay read its restorable map (refresh 0) or a refresh of it (1, 2, ...)."""

    NAME: ClassVar[str] = "map"
    pages: int
    seconds: float
    refresh: int = 0


@dataclass(frozen=True)
class Connected(RelayEvent):
    """A connection on one side: "qemu" (its local QEMU) or "wan" (the other relay)."""

    NAME: ClassVar[str] = "connected"
    side: str
    peer: str


@dataclass(frozen=True)
class Refused(RelayEvent):
    """The recv relay turned a WAN client away (wrong secret, not a relay); it keeps waiting."""

    NAME: ClassVar[str] = "refused"
    peer: str
    reason: str


@dataclass(frozen=True)
class Notice(RelayEvent):
    """Worth a line in the run's log, not a failure (e.g. a map refresh it could not use)."""

    NAME: ClassVar[str] = "notice"
    message: str


@dataclass(frozen=True)
class Stats(RelayEvent):
    """Counters so far and the rates over the last interval (bits per second)."""

    NAME: ClassVar[str] = "stats"
    counters: CodecCounters
    guest_rate_bps: int = 0
    wan_rate_bps: int = 0


@dataclass(frozen=True)
class Summary(RelayEvent):
    """The stream ended cleanly: the final counters, and the CPU seconds (user + system, all
    threads) the relay process used from its start; 0 from a relay too old to say."""

    NAME: ClassVar[str] = "summary"
    counters: CodecCounters
    cpu_s: float = 0.0


@dataclass(frozen=True)
class DiskPages(RelayEvent):
    """The send relay's pages per disk, in the order of its --disk arguments, as comma-separated
    counts: teleported, and named by the map but sent whole because the disk's bytes there are
    not the page's (written since the base: the overlay holds them). Just before the Summary."""

    NAME: ClassVar[str] = "disk_pages"
    teleported: str
    refused: str

    def counts(self) -> tuple[list[int], list[int]]:
        def ints(text: str) -> list[int]:
            return [int(x) for x in text.split(",") if x.strip()]

        return ints(self.teleported), ints(self.refused)


@dataclass(frozen=True)
class Failed(RelayEvent):
    """The relay gave up; the message says why (and what to do)."""

    NAME: ClassVar[str] = "error"
    message: str


EVENTS: dict[str, type[RelayEvent]] = {
    cls.NAME: cls for cls in (Listening, MapLoaded, Connected, Refused, Notice, Stats, Summary,
                              DiskPages, Failed)}
_COUNTER_FIELDS = tuple(f.name for f in dataclasses.fields(CodecCounters))


def encode(event: RelayEvent) -> str:
    """One JSON line (without the newline)."""
    out: dict[str, Any] = {"event": event.NAME, "role": event.role, "t": event.t}
    for f in dataclasses.fields(event):
        if f.name in ("role", "t"):
            continue
        value = getattr(event, f.name)
        if isinstance(value, CodecCounters):
            out.update(value.as_dict())
        else:
            out[f.name] = value
    return json.dumps(out)


def decode(line: str) -> RelayEvent | None:
    """The event a relay wrote, or None for a line that is not one."""
    try:
        raw = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(raw, dict):
        return None
    cls = EVENTS.get(raw.get("event"))  # type: ignore[arg-type]
    if cls is None:
        return None
    try:
        kwargs: dict[str, Any] = {"role": str(raw.get("role", "")), "t": float(raw.get("t", 0))}
        for f in dataclasses.fields(cls):
            if f.name in ("role", "t"):
                continue
            if f.name == "counters":
                kwargs["counters"] = CodecCounters(
                    **{k: _int(raw.get(k, 0)) for k in _COUNTER_FIELDS})
            elif f.name in raw:
                kwargs[f.name] = _typed(f.type, raw[f.name])
        return cls(**kwargs)
    except (TypeError, ValueError):
        return None


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"not an integer: {value!r}")
    return value


def _typed(annotation: Any, value: Any) -> Any:
    """Check a field's JSON value against its annotation (annotations are strings here)."""
    kind = {"int": int, "float": (int, float), "str": str}.get(str(annotation))
    if kind is None or isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"{value!r} is not {annotation}")
    return float(value) if annotation == "float" else value
