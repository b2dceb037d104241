"""pcteleport: operator console for page cache teleportation."""

__version__ = "0.1.0"
