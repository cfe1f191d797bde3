"""The router's own work per request, without sockets: one client connection and one pooled
upstream connection of the real classes (`ClientConnection`, `UpstreamConnection`, the real
`Router` context, routes, hop recorder and collector policy) on transports that only count
what they are given, driven with a request and its response, N times. What it prints is the
CPU time of laneway's Python per exchange (parse, route, forward, record), the part the
system calls and the event loop (the same for any proxy on this machine) come on top of.
The least of several rounds is the figure to steer the hot path's optimisations by: another
tenant of a shared machine only ever adds to a round's time (the median shows how much).

    python bench/hotpath.py [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))

from tests.scans import use_scans

from laneway.core.hops import ROW_FIELDS, Hop
from laneway.core.routes import ForkRoute, RouteTable, Upstream
from laneway.dataplane.main import HopBuffer
from laneway.router import Router, RouterSettings, scan
from laneway.router.client import ClientConnection
from laneway.router.upstream import UpstreamConnection

KEY = "bench0000000"
ROUNDS = 9
REQUEST = (b"GET /1k HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
           b"baggage: sentry-trace=1, laneway-key=bench0000000;p=1\r\n\r\n")
UNKEYED = b"GET /1k HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n"
# What nginx answers for a 1 KiB file (the bench's origins).
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 03 Dec 2026 09:00:00 GMT\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: 1024\r\n"
            b"Last-Modified: Thu, 03 Dec 2026 08:00:00 GMT\r\nConnection: keep-alive\r\n"
            b'ETag: "6750a1c0-400"\r\nx-origin: fork\r\nAccept-Ranges: bytes\r\n\r\n'
            + b"x" * 1024)


class NullTransport:
    """A transport that takes writes and counts them, the interface uvloop's gives."""

    def __init__(self) -> None:
        self.written = 0
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written += 1

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name in ("peername", "sockname") else default


async def measure(requests: int, keyed: bool) -> tuple[float, float]:
    hops = HopBuffer(100_000)  # the data plane's own buffer
    router = Router(RouterSettings(), hop_sink=hops.add)
    ctx = router.context("svc", "http")
    upstream = Upstream("127.0.0.1", 9)
    table = RouteTable(version=1, baseline={"svc": upstream})
    table.forks["svc"] = {KEY: ForkRoute("svc", "bench", upstream, True, fork="svc@bench#1")}
    router.apply(table)
    client = ClientConnection(ctx)
    client_transport = NullTransport()
    client.connection_made(client_transport)  # type: ignore[arg-type]
    up = UpstreamConnection(ctx.pool, upstream, ctx.clock, ctx.max_response_header_bytes)
    up_transport = NullTransport()
    up.connection_made(up_transport)  # type: ignore[arg-type]
    ctx.pool.put(up)
    request = REQUEST if keyed else UNKEYED
    rounds = []
    for _ in range(ROUNDS):
        started = time.process_time()
        for _ in range(requests):
            client.data_received(request)
            up.data_received(RESPONSE)
        router.recorder.flush()  # handing the records to the buffer is part of their cost
        rounds.append((time.process_time() - started) / requests * 1e6)
        await asyncio.sleep(0)
    # Every exchange went through and was recorded where it should: else the figure is not
    # the hot path's.
    expected = "bench" if keyed else "baseline"
    rows, _, _ = hops.after(hops.seq - 1)
    last = Hop.from_row(ROW_FIELDS, rows[-1]) if rows else None
    if not client_transport.written == up_transport.written == ROUNDS * requests \
            or last is None or last.destination != expected or last.status != 200:
        raise SystemExit(f"hotpath: the exchanges did not go through: "
                         f"{client_transport.written} responses, {up_transport.written} "
                         f"requests, last hop {last}")
    await router.close()
    return min(rounds), statistics.median(rounds)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args()
    for keyed in (True, False):
        for compiled in ((True, False) if scan.COMPILED else (False,)):
            use_scans("compiled" if compiled else "python")
            least, median = asyncio.run(measure(args.requests, keyed))
            print(f"   {'keyed' if keyed else 'unkeyed':<8} {least:6.2f} us of laneway's Python "
                  f"per exchange, scans {'compiled' if compiled else 'in Python':<9} (least of "
                  f"{ROUNDS} rounds of {args.requests}, no sockets; median {median:.2f})")


if __name__ == "__main__":
    main()
