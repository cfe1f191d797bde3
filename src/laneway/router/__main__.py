"""`python -m laneway.router --service S --port P --routes URL --token T`: one router for one
service, outside the daemon (as a sidecar would run), fed by the control plane's routes feed.
It keeps serving its last table while the control plane is away."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

import uvloop

from laneway.router.feed_http import HttpRoutesFeed
from laneway.router.server import Router, RouterError, RouterSettings


async def main(args: argparse.Namespace) -> int:
    feed = HttpRoutesFeed(args.routes, args.token)
    router = Router(RouterSettings(host=args.host))
    try:
        port = await router.listen(args.service, args.port)
    except RouterError as exc:
        print(f"Error: {exc}", file=sys.stderr)  # noqa: T201
        await feed.aclose()
        return 1
    router.follow(feed)
    print(f"laneway router for {args.service} on {args.host}:{port}", flush=True)  # noqa: T201
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await router.close()
    await feed.aclose()
    return 0


parser = argparse.ArgumentParser(prog="python -m laneway.router")
parser.add_argument("--service", required=True)
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--routes", default=os.environ.get("LANEWAY_ROUTES_URL", ""),
                    help="the routes feed URL (default: $LANEWAY_ROUTES_URL)")
parser.add_argument("--token", default=os.environ.get("LANEWAY_ROUTES_TOKEN", ""),
                    help="a token for it (default: $LANEWAY_ROUTES_TOKEN)")
arguments = parser.parse_args()
if not arguments.routes:
    parser.error("--routes (or LANEWAY_ROUTES_URL) is required")
sys.exit(uvloop.run(main(arguments)))
