"""WAN profiles the lab can emulate between its sites."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pcteleport.errors import PcteleportError


@dataclass(frozen=True)
class WanProfile:
    name: str
    rate_mbit: float
    rtt_ms: float

    @property
    def one_way_ms(self) -> float:
        return self.rtt_ms / 2

    @property
    def rate_bytes(self) -> float:
        return self.rate_mbit * 1e6 / 8

    @property
    def bdp_bytes(self) -> float:
        """Bandwidth-delay product: the bytes in flight that keep the link full."""
        return self.rate_bytes * self.rtt_ms / 1000

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


PROFILES: dict[str, WanProfile] = {
    p.name: p
    for p in (
        WanProfile("default", 100, 50),
        WanProfile("fast", 1000, 10),
        WanProfile("slow", 30, 100),
    )
}


def profile(name: str) -> WanProfile:
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(PROFILES)
        raise PcteleportError(f"no WAN profile {name!r}: use one of {known}") from None
