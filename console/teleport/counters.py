"""What a codec run did, as plain numbers the relays print and the console records."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class CodecCounters:
    guest_bytes: int = 0  # QEMU stream bytes in (encoder) or out (decoder)
    wan_bytes: int = 0  # frame bytes sent (encoder) or received (decoder)
    pages_teleported: int = 0  # PAGE records sent as references / restored from the replica
    pages_teleported_later: int = 0  # of those, pages only a map refresh named (encoder)
    pages_zero: int = 0  # ZERO records
    pages_sent: int = 0  # PAGE records carried with their bytes
    pages_refused: int = 0  # the map named them, but their bytes did not match the disk
    pages_fetched: int = 0  # replica block failed its hash; the page came over the back channel
    frames: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
