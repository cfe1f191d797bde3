"""An open-loop load generator at a fixed rate (wrk runs closed-loop and cannot): requests are
scheduled every 1/RATE s over CONNECTIONS keep-alive connections, and each latency is measured
from its scheduled time (so a stall counts for every request it delayed). Prints JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import uvloop


async def one_connection(port: int, request: bytes, times: list[float],
                         out: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for scheduled in times:
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        out.append((time.perf_counter() - scheduled) * 1000)
    writer.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/1k")
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--header", action="append", default=[])
    args = parser.parse_args()
    headers = "".join(f"{h}\r\n" for h in args.header)
    request = f"GET {args.path} HTTP/1.1\r\nhost: bench\r\n{headers}\r\n".encode()
    total = int(args.rate * args.seconds)
    start = time.perf_counter() + 0.2
    schedule = [start + i / args.rate for i in range(total)]
    out: list[float] = []
    await asyncio.gather(*(one_connection(args.port, request, schedule[c::args.connections], out)
                           for c in range(args.connections)))
    warm = sorted(out[len(out) // 10:])  # the first tenth warms caches and pools
    print(json.dumps({"p50": statistics.median(warm), "p99": warm[int(len(warm) * 0.99)],
                      "count": len(out)}))


uvloop.run(main())
