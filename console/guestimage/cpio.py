"""A newc cpio archive writer, the format the kernel unpacks for an initramfs."""

from __future__ import annotations


class _Cpio:
    """A newc ("070701") cpio archive, as the kernel unpacks for an initramfs."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._ino = 1
        self._dirs: set[str] = set()

    def _entry(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)):
        name_b = name.lstrip("/").encode() + b"\0"
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(name_b), 0)
        self._ino += 1
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._chunks.append(_pad4(header + name_b))
        self._chunks.append(_pad4(data))

    def directory(self, name: str) -> None:
        if name not in self._dirs and name != "/":
            self._dirs.add(name)
            self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, perm: int) -> None:
        self._entry(name, 0o100000 | perm, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def char_device(self, name: str, major: int, minor: int) -> None:
        self._entry(name, 0o020600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return b"".join(self._chunks)


def _pad4(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)
