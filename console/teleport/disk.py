"""Read-only access to a raw disk image by byte offset, with bounds that are never crossed."""

from __future__ import annotations

import mmap
import os
import stat
from pathlib import Path

from pcteleport.errors import PcteleportError

QCOW2_MAGIC = b"QFI\xfb"


class DiskError(PcteleportError):
    pass


class DiskImage:
    """A raw disk image mapped read-only; `block(offset)` returns 4096 bytes or None."""

    def __init__(self, path: str | os.PathLike[str], page_size: int = 4096) -> None:
        self.path = Path(path)
        self.page_size = page_size
        try:
            # O_NONBLOCK: opening a FIFO would otherwise wait for a writer for ever
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise DiskError(f"cannot open disk image {self.path}: {exc.strerror}") from None
        try:
            mode = os.fstat(fd).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
                raise DiskError(f"disk image {self.path} is not a file or a block device")
            self.size = os.lseek(fd, 0, os.SEEK_END)  # a block device's size too
            head = os.pread(fd, 4, 0)
            if head == QCOW2_MAGIC:
                raise DiskError(
                    f"{self.path} is a qcow2 image: teleport reads raw images "
                    "(give the raw replica, or convert with qemu-img convert -O raw)"
                )
            self._mm = mmap.mmap(fd, self.size, prot=mmap.PROT_READ) if self.size else None
        finally:
            os.close(fd)

    def block(self, offset: int) -> bytes | None:
        """The page-sized block at `offset`, or None if it is not wholly inside the image."""
        end = offset + self.page_size
        if offset < 0 or end > self.size or self._mm is None:
            return None
        return self._mm[offset:end]

    @property
    def sizes(self) -> list[int]:
        return [self.size]

    def locate(self, offset: int) -> tuple[Path, int]:
        """(the image, its byte) a stream's disk offset names."""
        return self.path, offset

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None

    def __enter__(self) -> DiskImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- several disks in one stream ------------------------------------------------------------
# A REF record and a map extent carry one 64-bit disk offset. With several disks, disk i's byte
# o is the offset (i << DISK_BITS) | o: the wire format stays as it is, both relays list their
# disks in the same order, and the encoder's HELLO says how many and how big.

DISK_BITS = 48  # 256 TiB a disk
_LOW = (1 << DISK_BITS) - 1


def disk_offset(index: int, offset: int) -> int:
    return (index << DISK_BITS) | offset


def split_offset(offset: int) -> tuple[int, int]:
    """(disk index, byte offset in that disk) of a stream's disk offset."""
    return offset >> DISK_BITS, offset & _LOW


class DiskSet:
    """Several raw images read as one (see DISK_BITS); `block(offset)` like DiskImage's."""

    def __init__(self, paths: list[str | os.PathLike[str]], page_size: int = 4096) -> None:
        self.images: list[DiskImage] = []
        try:
            for p in paths:
                self.images.append(DiskImage(p, page_size))
        except DiskError:
            self.close()
            raise
        self.page_size = page_size
        self.path = Path(", ".join(str(i.path) for i in self.images))

    @property
    def size(self) -> int:
        return sum(i.size for i in self.images)

    @property
    def sizes(self) -> list[int]:
        return [i.size for i in self.images]

    def block(self, offset: int) -> bytes | None:
        index, off = split_offset(offset)
        return self.images[index].block(off) if index < len(self.images) else None

    def locate(self, offset: int) -> tuple[Path, int]:
        """(the image, its byte) a stream's disk offset names."""
        index, off = split_offset(offset)
        return (self.images[index].path if index < len(self.images) else self.path), off

    def close(self) -> None:
        for i in self.images:
            i.close()

    def __enter__(self) -> DiskSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_disks(paths: list[str] | str | None) -> DiskImage | DiskSet | None:
    """No disk, one disk (offsets as they always were), or several (see DISK_BITS)."""
    if not paths:
        return None
    if isinstance(paths, str):
        return DiskImage(paths)
    return DiskImage(paths[0]) if len(paths) == 1 else DiskSet(list(paths))
