"""What an operator reads when a backend call fails: the backend's own sentence when it gave
one, otherwise the exception named as a backend bug — never a crashed console."""

from __future__ import annotations

from pcteleport.errors import PcteleportError


def describe(exc: BaseException) -> str:
    if isinstance(exc, PcteleportError):
        return str(exc)
    return f"backend bug, please report it: {type(exc).__name__}: {exc}"
