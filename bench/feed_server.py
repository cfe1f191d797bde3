"""A routes feed and a hop intake for benchmarks of `python -m laneway.router` (the sidecar's
command line): GET /v1/routes serves a table with one service `svc` (the baseline at
--upstream, the key `bench0000000` routed to --fork), POST /v1/hops takes hop batches and keeps
their count, both behind a fixed bearer token, as the operator serves them."""

from __future__ import annotations

import argparse
import asyncio

import uvicorn
from peers import KEY, SIDECAR_TOKEN
from starlette.requests import Request
from starlette.responses import JSONResponse

from laneway.core.feed import RoutesBroadcaster
from laneway.core.routes import ForkRoute, RouteTable, Upstream
from laneway.runtime.kubernetes.feed import FixedToken, routes_endpoint


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", type=int, required=True)
    parser.add_argument("--fork", type=int, required=True)
    args = parser.parse_args()
    feed = RoutesBroadcaster()
    table = RouteTable(baseline={"svc": Upstream("127.0.0.1", args.upstream)})
    table.forks["svc"] = {KEY: ForkRoute("svc", "bench", Upstream("127.0.0.1", args.fork),
                                         True, fork="svc-lw-bench")}
    feed.publish(table)
    received = {"hops": 0}
    routes = routes_endpoint(feed, FixedToken(SIDECAR_TOKEN))

    async def hops(request: Request) -> JSONResponse:
        received["hops"] += len((await request.json())["hops"])
        return JSONResponse({"received": received["hops"]})

    from starlette.applications import Starlette
    from starlette.routing import Route

    app = Starlette(routes=[Route("/v1/routes", routes), Route("/v1/hops", hops,
                                                                methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=args.port,
                                           log_level="warning", lifespan="off"))
    await server.serve()


asyncio.run(main())
