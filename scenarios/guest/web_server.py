"""The web scenario's server: python3's http.server over the site, writing an access log as a web
server does (Common Log Format, appended to a file on the data disk). Once a second the log is
fsync'ed and what reached the disk since is journaled (writejournal.py: offset, length,
checksum), so that after a migration the guest agent can check every logged line is there.

Started by the scenario's warm command at boot and before each benchmark run; a second start
finds the port taken and exits, so starting it is idempotent.
Runs inside the guest: Python >= 3.9 standard library only."""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import sys
import threading
import time

from writejournal import JOURNAL_DIR, WriteJournal


class AccessLog:
    """Appends lines; `sync` makes what was appended durable and journals it."""

    def __init__(self, path: str, journal: WriteJournal) -> None:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.size = os.fstat(self.fd).st_size  # one writer: the end of the file is ours
        self.journal = journal
        self.pending = bytearray()
        self.pending_at = self.size
        self.lock = threading.Lock()

    def write(self, line: str) -> None:
        data = line.encode()
        with self.lock:
            os.write(self.fd, data)
            self.pending += data
            self.size += len(data)

    def sync(self) -> None:
        with self.lock:
            data, at = bytes(self.pending), self.pending_at
            self.pending.clear()
            self.pending_at = self.size
        if not data:
            return
        os.fsync(self.fd)
        self.journal.file_written(self.path, at, data)


def handler(root: str, log: AccessLog) -> type[http.server.SimpleHTTPRequestHandler]:
    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            status = getattr(code, "value", code)
            log.write(f'{self.address_string()} - - [{self.log_date_time_string()}] '
                      f'"{self.requestline}" {status} {size}\n')

        def log_message(self, format: str, *args: object) -> None:  # errors: stderr, as before
            sys.stderr.write(f"{self.log_date_time_string()} - {format % args}\n")

    return functools.partial(Handler, directory=root)  # type: ignore[return-value]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--root", required=True, help="the site's document root")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--bind", default="127.0.0.1")
    p.add_argument("--log", default="/data/log/access.log")
    p.add_argument("--journal", default=JOURNAL_DIR + "/web-access.jsonl")
    args = p.parse_args(argv)
    try:
        server = http.server.ThreadingHTTPServer((args.bind, args.port), None)  # type: ignore
    except OSError as exc:
        print(f"web_server: port {args.port}: {exc} (already serving?)", file=sys.stderr)
        return 0 if exc.errno == 98 else 1  # EADDRINUSE: it runs already
    log = AccessLog(args.log, WriteJournal(args.journal))
    server.RequestHandlerClass = handler(args.root, log)  # type: ignore[assignment]

    def syncer() -> None:
        while True:
            time.sleep(1.0)
            log.sync()
            log.journal.sync()

    threading.Thread(target=syncer, daemon=True).start()
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
