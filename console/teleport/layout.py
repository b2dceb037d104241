"""Guest-physical addresses <-> offsets in QEMU's main RAM block on x86 PC machines.

QEMU keeps all guest RAM in one RAM block ("pc.ram") and maps it into the guest as two
aliases: [0, below_4g) at guest-physical 0 and the rest at 4 GiB. Where the split falls
depends on the machine type and the RAM size (hw/i386/pc_piix.c and pc_q35.c); the
kernel module reports guest-physical addresses, the migration stream speaks block offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

from pcteleport.errors import PcteleportError

GiB = 1 << 30
FOUR_GIB = 4 * GiB


class LayoutError(PcteleportError):
    pass


@dataclass(frozen=True)
class RamLayout:
    ram_size: int
    below_4g: int

    @classmethod
    def for_machine(
        cls, machine: str, ram_size: int, max_ram_below_4g: int | None = None
    ) -> RamLayout:
        """The split QEMU uses for `machine` (e.g. "pc-i440fx-7.2", "pc-q35-7.2")."""
        m = machine.lower()
        if "q35" in m:
            lowmem = 0x80000000 if ram_size >= 0xB0000000 else 0xB0000000
        elif m.startswith("pc") or "i440fx" in m or m == "":
            # i440fx: gigabyte-aligned split on every machine type since 1.7.
            lowmem = 0xC0000000 if ram_size >= 0xE0000000 else 0xE0000000
        elif "microvm" in m:
            lowmem = 0x80000000 if ram_size >= 0xB0000000 else 0xB0000000
        else:
            raise LayoutError(
                f"unknown machine type '{machine}': teleport knows the RAM layout of "
                "i440fx (pc) and q35 machines"
            )
        if max_ram_below_4g is not None and lowmem > max_ram_below_4g:
            lowmem = max_ram_below_4g
        return cls(ram_size=ram_size, below_4g=min(ram_size, lowmem))

    def ram_offset(self, gpa: int) -> int | None:
        """Offset in pc.ram of guest-physical `gpa`, or None if no RAM is there."""
        if gpa < self.below_4g:
            return gpa
        if gpa >= FOUR_GIB:
            off = gpa - FOUR_GIB + self.below_4g
            if off < self.ram_size:
                return off
        return None

    def spans(self) -> list[tuple[int, int, int]]:
        """Where RAM is, as (first gpa, gpa past the end, ram offset - gpa): below 4 GiB and,
        if RAM reaches past the PCI hole, from 4 GiB on. ram_offset() in bulk."""
        out = [(0, self.below_4g, 0)]
        if self.ram_size > self.below_4g:
            out.append((FOUR_GIB, self.gpa_end(), self.below_4g - FOUR_GIB))
        return out

    def gpa_end(self) -> int:
        """One past the highest guest-physical address that is RAM."""
        if self.ram_size <= self.below_4g:
            return self.ram_size
        return FOUR_GIB + self.ram_size - self.below_4g

    def gpa(self, ram_offset: int) -> int:
        """Guest-physical address of `ram_offset` in pc.ram."""
        if not 0 <= ram_offset < self.ram_size:
            raise LayoutError(f"offset 0x{ram_offset:x} is outside guest RAM")
        if ram_offset < self.below_4g:
            return ram_offset
        return FOUR_GIB + ram_offset - self.below_4g
