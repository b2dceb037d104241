"""What the migration engine (QEMU, libvirt) at a site can be trusted with.

Pure functions on version numbers, shared by the service (which refuses), the CLI and bench
(which refuse unless forced) and the console (which warns in the migrate dialog).
"""

from __future__ import annotations

#: QEMU before 9.0 loses dirty pages when it migrates a TCG guest: stores by TCG-translated code
#: did not reach the migration's dirty bitmap (upstream commit 03bfc2188f, "physmem: Fix migration
#: dirty bitmap coherency with TCG memory access", in 9.0). KVM guests are not affected: KVM
#: tracks dirty pages itself. Measured here on Debian 12's 7.2.22: 8-42 pages lost per migration.
TCG_DIRTY_FIX = (9, 0, 0)

#: QEMU 7.2's calc-dirty-rate in dirty-bitmap mode kills a TCG guest's QEMU (measured on
#: 7.2.22: a segfault reading KVM's state, which TCG has none of); 10.0.2 measures fine. Where
#: it was fixed in between is not known here, so the line is drawn where TCG_DIRTY_FIX is.
TCG_DIRTY_BITMAP_SAFE = TCG_DIRTY_FIX


def version_tuple(version: int | str) -> tuple[int, int, int]:
    """libvirt's encoded number (major * 1,000,000 + minor * 1,000 + micro) or "10.0.2"."""
    if isinstance(version, int):
        return version // 1_000_000, version // 1000 % 1000, version % 1000
    parts = [int(p) for p in version.split(".")[:3] if p.isdigit()]
    if not parts:
        raise ValueError(f"not a version: {version!r}")
    parts += [0] * (3 - len(parts))
    return parts[0], parts[1], parts[2]


def version_text(version: int | str) -> str:
    return ".".join(map(str, version_tuple(version)))


def tcg_dirty_page_bug(qemu_version: int | str | None, tcg: bool, site: str = "") -> str | None:
    """The one-line warning for migrating a TCG guest with a QEMU that loses its dirty pages,
    or None when the engine is fine (KVM, QEMU >= 9.0) or its version is unknown."""
    if not tcg or qemu_version in (None, "", 0):
        return None
    try:
        v = version_tuple(qemu_version)
    except ValueError:
        return None
    if v >= TCG_DIRTY_FIX:
        return None
    where = f" at {site}" if site else ""
    return (f"QEMU {version_text(qemu_version)}{where} loses dirty pages when it migrates a TCG "
            "guest (fixed in QEMU 9.0, commit 03bfc2188f): the guest may arrive corrupted; "
            "use QEMU >= 9.0 (scripts/setup.sh installs 10.0) or KVM")


def dirty_bitmap_crashes(qemu_version: int | str | None, tcg: bool) -> bool:
    """Would QEMU's dirty-bitmap dirty-rate measurement crash this guest's QEMU? (Page
    sampling does not.) An unknown version is taken to be fine, as tcg_dirty_page_bug does."""
    if not tcg or qemu_version in (None, "", 0):
        return False
    try:
        return version_tuple(qemu_version) < TCG_DIRTY_BITMAP_SAFE
    except ValueError:
        return False
