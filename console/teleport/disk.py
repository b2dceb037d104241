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

    def close(self) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None

    def __enter__(self) -> DiskImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
