"""Errors an operator can act on: each message says what went wrong and what to do next."""


class PcteleportError(Exception):
    """Base of every error pcteleport reports as one clear line (no traceback)."""
