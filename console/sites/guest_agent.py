"""Host side of the guest agent protocol (guest/agent.py `serve`), reached over SSH.

The agent listens on a virtio-serial port; QEMU exposes it on the site host as a unix socket
(`<agent_socket_dir>/<vm>.agent.sock`). A virtio-serial socket takes one client at a time, so
each call opens its own connection through the site's SSH login, one call per VM at a time.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import asyncssh

from pcteleport.errors import PcteleportError
from pcteleport.records import Composition
from pcteleport.sites.agent_client import AgentRequestError, AsyncAgentClient
from pcteleport.sites.remote import SiteHost

AGENT_WINDOW = 64 << 20  # bytes: the longest answer line the agent channel carries whole

CALL_TIMEOUT = 20.0
MAP_TIMEOUT = 120.0  # a full map walk of a big guest under TCG takes a while


class AgentUnavailable(PcteleportError):
    """The agent could not be reached at all."""


class AgentRefused(PcteleportError):
    """The agent answered with an error (its message says what to do)."""


_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock_for(key: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


class GuestAgent:
    def __init__(self, host: SiteHost, vm: str, socket_dir: str) -> None:
        self.host = host
        self.vm = vm
        self.socket = f"{socket_dir.rstrip('/')}/{vm}.agent.sock"

    async def _acall(self, method: str, params: dict[str, Any], timeout: float) -> Any:
        conn = await self.host.connection()
        try:
            # A big VM's map is one JSON line of megabytes; asyncssh hands back a line longer
            # than the channel's receive window cut short (2 MiB by default): open it wider.
            reader, writer = await asyncio.wait_for(
                conn.open_unix_connection(self.socket, window=AGENT_WINDOW), 10)
        except (asyncssh.Error, OSError, TimeoutError) as exc:
            raise AgentUnavailable(
                f"guest agent of {self.vm} unreachable at {self.host.site.name} "
                f"({self.socket}): {exc or 'timed out'}"
            ) from None
        client = AsyncAgentClient(reader, writer, timeout=timeout)  # type: ignore[arg-type]
        try:
            return await client.request(method, **params)
        except AgentRequestError as exc:
            raise AgentRefused(f"guest agent of {self.vm}: {exc}") from None
        except (PcteleportError, ValueError, OSError, asyncssh.Error) as exc:
            raise AgentUnavailable(f"guest agent of {self.vm}: {exc}") from None
        finally:
            await client.close()

    def call(self, method: str, params: dict[str, Any] | None = None,
             timeout: float = CALL_TIMEOUT) -> Any:
        with _lock_for(f"{self.host.site.name}:{self.socket}"):
            return self.host.loop.call(self._acall(method, params or {}, timeout), timeout + 20)

    def ping(self) -> None:
        self.call("ping")

    def composition(self) -> Composition:
        return Composition.from_agent(self.call("composition"))

    def restorable_map(self, disk: str) -> tuple[str, dict[str, str]]:
        """(extent text, header) of the restorable map of `disk` (serial, name or MAJ:MIN)."""
        r = self.call("map", {"disk": disk, "format": "text"}, timeout=MAP_TIMEOUT)
        return r["text"], dict(r.get("header", {}))
