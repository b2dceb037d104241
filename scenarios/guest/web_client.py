"""HTTP client of the web scenario: requests random pages of the site one after another and
writes requests/s, bytes/s and latency (mean, p95, max in ms) for every second.

The lab's VMs have no network interface, so the client runs inside the guest and talks to the
guest's own server over loopback (see docs/results.md for why). Python >= 3.9 stdlib only."""

from __future__ import annotations

import argparse
import http.client
import os
import random
import sys
import time

from persecond import PerSecond, open_output, percentile


def site_pages(root: str) -> list[str]:
    pages = []
    for dirpath, _dirs, files in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in files:
            if name.endswith(".html"):
                pages.append("/" + name if rel == "." else f"/{rel}/{name}")
    pages.sort()
    return pages


def latency_summary(counts: dict[str, float], latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {"latency_ms_mean": 0.0, "latency_ms_p95": 0.0, "latency_ms_max": 0.0}
    return {"latency_ms_mean": 1000 * sum(latencies) / len(latencies),
            "latency_ms_p95": 1000 * percentile(latencies, 0.95),
            "latency_ms_max": 1000 * max(latencies)}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--root", required=True, help="the server's document root (to list pages)")
    p.add_argument("--out", default="-")
    p.add_argument("--duration", type=float, default=0)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    pages = site_pages(args.root)
    if not pages:
        print(f"web_client: no .html pages under {args.root}", file=sys.stderr)
        return 1
    rng = random.Random(args.seed)
    meter = PerSecond(open_output(args.out), latency_summary)

    def step() -> None:
        path = rng.choice(pages)
        t0 = time.monotonic()
        conn = http.client.HTTPConnection(args.host, args.port, timeout=args.timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            ok = resp.status == 200
        except (TimeoutError, OSError, http.client.HTTPException):
            ok, body = False, b""
            time.sleep(0.1)  # server down: do not spin
        finally:
            conn.close()
        if ok:
            meter.add("requests", 1, latency=time.monotonic() - t0)
            meter.add("bytes", len(body))
        else:
            meter.add("errors", 1)

    return meter.run_until_stopped(step, args.duration)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
