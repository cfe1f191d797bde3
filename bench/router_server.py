"""A laneway router on its own, for benchmarks: one service on PORT, a routing table with N
sandboxes (the key `bench0000000` among them, routed to FORK), hop recording on (into the data
plane's own bounded buffer, 100k records, as the embedded data plane keeps them)."""

from __future__ import annotations

import argparse
import asyncio
import signal

import uvloop

from laneway.core.routes import ForkRoute, RouteTable, Upstream
from laneway.dataplane.main import HopBuffer
from laneway.router import Router, RouterSettings
from laneway.router.hops import freeze_startup

KEY = "bench0000000"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", type=int, required=True)
    parser.add_argument("--fork", type=int, required=True)
    parser.add_argument("--sandboxes", type=int, default=1)
    args = parser.parse_args()
    hops = HopBuffer(100_000)
    router = Router(RouterSettings(), hop_sink=hops.add)
    await router.listen("svc", args.port)
    table = RouteTable(version=1, baseline={"svc": Upstream("127.0.0.1", args.upstream)})
    forks = {f"sb{i:010d}": ForkRoute("svc", f"sb-{i}", Upstream("127.0.0.1", args.fork), True,
                                      fork=f"svc@sb-{i}#1") for i in range(1, args.sandboxes)}
    forks[KEY] = ForkRoute("svc", "bench", Upstream("127.0.0.1", args.fork), True,
                           fork="svc@bench#1")
    table.forks["svc"] = forks
    router.apply(table)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    freeze_startup()  # as the data plane does once it has started
    print("ready", flush=True)
    await stop.wait()
    await router.close()


uvloop.run(main())
