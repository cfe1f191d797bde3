"""What the preview edge costs a browser's request: the same keyed GET sent to a service's router
(the reference) and through the edge (`Host: sb--web.localhost`, one hop more on loopback),
interleaved in rounds, one keep-alive connection each, sequential requests. Prints the median
and p99 latency of each and the edge's ratio to the router's.

    .venv/bin/python bench/preview_edge.py [--requests 2000] [--rounds 5]

Everything runs in this one process on one core (origin, router, edge and client share the
event loop), so the figures are for comparing the two paths, not absolute capacity: the edge is
for people and agents opening pages, not for load.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import uvloop

from laneway.core.routes import ForkRoute, RouteTable, Upstream
from laneway.router import Router, RouterSettings

KEY = "bench0000000"
BODY = b'{"ok": true}'
ANSWER = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\ncontent-type: application/json\r\n\r\n%s" % (
    len(BODY), BODY)


class Origin(asyncio.Protocol):
    """Answers every request head with a fixed small JSON body, keep-alive."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            _, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
            self.transport.write(ANSWER)  # type: ignore[attr-defined]


async def timed(port: int, head: bytes, count: int) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    out = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            writer.write(head)
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(len(BODY))
            out.append((time.perf_counter() - started) * 1e6)
    finally:
        writer.close()
    return out


async def main(requests: int, rounds: int) -> None:
    loop = asyncio.get_running_loop()
    origin = await loop.create_server(Origin, "127.0.0.1", 0)
    origin_port = origin.sockets[0].getsockname()[1]
    router = Router(RouterSettings())
    web = await router.listen("web", 0)
    edge = await router.listen_edge(0)
    table = RouteTable(version=1, baseline={"web": Upstream("127.0.0.1", origin_port)})
    table.forks["web"] = {KEY: ForkRoute("web", "sb", Upstream("127.0.0.1", origin_port), True,
                                         fork="web@sb#1")}
    table.names = {"sb": KEY}
    router.apply(table)
    direct = (b"GET /page HTTP/1.1\r\nhost: 127.0.0.1\r\n"
              b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"
              b"baggage: laneway-key=" + KEY.encode() + b"\r\n\r\n")
    via_edge = (b"GET /page HTTP/1.1\r\nhost: sb--web.localhost:%d\r\n"
                b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"
                b"\r\n" % edge)
    await timed(web, direct, 200)  # warm-up: pools, caches
    await timed(edge, via_edge, 200)
    samples: dict[str, list[float]] = {"router": [], "edge": []}
    for _ in range(rounds):  # interleaved: machine noise falls on both alike
        samples["router"] += await timed(web, direct, requests)
        samples["edge"] += await timed(edge, via_edge, requests)
    await router.close()
    origin.close()
    figures = {}
    for name, values in samples.items():
        values.sort()
        figures[name] = (statistics.median(values), values[int(len(values) * 0.99)])
    print(f"preview edge vs router: {rounds} rounds x {requests} sequential keyed GETs, one "
          "keep-alive connection each, 1 core, 12-byte answers")
    for name, (median, p99) in figures.items():
        print(f"  {name:<7} median {median:7.1f} us   p99 {p99:7.1f} us")
    ratio = figures["edge"][0] / figures["router"][0]
    print(f"  the edge takes {ratio:.2f}x the router's median (one hop more: edge -> router "
          "-> origin)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    uvloop.run(main(args.requests, args.rounds))
