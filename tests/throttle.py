"""A rate-limited TCP link for tests that run without the lab: forwards one connection
each way, pacing bytes to a fixed rate, and counts what crossed it."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class ThrottledLink(threading.Thread):
    def __init__(self, listen_port: int, to: tuple[str, int], rate_bps: float) -> None:
        super().__init__(daemon=True)
        self.server = socket.create_server(("127.0.0.1", listen_port))
        self.to = to
        self.rate = rate_bps / 8  # bytes per second
        self.forward_bytes = 0
        self.backward_bytes = 0

    def run(self) -> None:
        conn, _ = self.server.accept()
        self.server.close()
        peer = socket.create_connection(self.to, timeout=20)
        peer.settimeout(None)
        back = threading.Thread(target=self._pump, args=(peer, conn, False), daemon=True)
        back.start()
        self._pump(conn, peer, True)
        back.join(30)
        conn.close()
        peer.close()

    def _pump(self, src: socket.socket, dst: socket.socket, forward: bool) -> None:
        start = time.monotonic()
        sent = 0
        try:
            while chunk := src.recv(16384):
                dst.sendall(chunk)
                sent += len(chunk)
                if forward:
                    self.forward_bytes = sent
                else:
                    self.backward_bytes = sent
                ahead = sent / self.rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
