"""The data plane's HTTP API on loopback: what the daemon asks of it, and the routes feed that
the processes it starts read.

Two bearer tokens: the daemon's (in `.laneway/dataplane.json`, 0600) opens everything; the
read-only routes token given to processes opens `GET /v1/routes` only. Long polls (`wait=`) let
the daemon follow unit states and hop records without a request per change.
"""

from __future__ import annotations

import hmac
import os
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from laneway.core.feed import update_to_json
from laneway.core.hops import ROW_FIELDS
from laneway.core.routes import RouteTable
from laneway.core.runtime import ProcessSpec
from laneway.core.spec import PROTOCOLS

if TYPE_CHECKING:
    from laneway.dataplane.main import DataPlane

__all__ = ["control_app"]

MAX_WAIT = 30.0
HOPS_PER_ANSWER = 2000


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


def _number(request: Request, name: str, default: float) -> float:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise _BadRequest(f"query parameter {name}: expected a number, got {raw!r}") from None


class _BadRequest(Exception):
    pass


async def _bad_request(request: Request, exc: Exception) -> Response:
    return _error(400, "bad_request", str(exc))


class _Auth(BaseHTTPMiddleware):
    def __init__(self, app: ASGIApp, full: bytes, reader: bytes) -> None:
        super().__init__(app)
        self.full = full
        self.reader = reader

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        given = request.headers.get("authorization", "").encode()
        feed = request.url.path == "/v1/routes" and request.method == "GET"
        if hmac.compare_digest(given, self.full) or (
                feed and hmac.compare_digest(given, self.reader)):
            return await call_next(request)
        return _error(401, "unauthorized", "missing or wrong data-plane token")


def control_app(plane: DataPlane, token: str) -> Starlette:
    async def state(request: Request) -> JSONResponse:
        return JSONResponse({
            "pid": os.getpid(),
            "startedAt": plane.started_at,
            "settings": plane.raw_settings,
            "listeners": dict(plane.router.ports),
            "protocols": plane.listener_protocols(),
            "preview": plane.router.edge.port if plane.router.edge else None,
            # What every unit gets besides its spec and that a process run by hand needs too
            # (`laneway sandbox env`): the routes feed. Not the owner marker: laneway stops
            # processes that carry it, and a process run by hand is the developer's.
            "unitEnv": {k: v for k, v in (plane.runtime.extra_env if plane.runtime else
                                          {}).items() if k.startswith("LANEWAY_ROUTES")},
            "unitsVersion": plane.units_version,
            "units": plane.units_json(),
            "routes": plane.feed.snapshot().to_json(),
            "hopsSeq": plane.hops.seq,
        })

    async def units(request: Request) -> JSONResponse:
        since = int(_number(request, "since", -1))
        await plane.wait_units(since, min(_number(request, "wait", 0), MAX_WAIT))
        return JSONResponse({"version": plane.units_version, "units": plane.units_json()})

    async def start_unit(request: Request) -> JSONResponse:
        assert plane.runtime is not None
        spec = ProcessSpec.from_json(await request.json())
        await plane.runtime.start(spec)
        return JSONResponse({"version": plane.units_version, "units": plane.units_json()})

    async def stop_unit(request: Request) -> JSONResponse:
        body = await request.json()
        drain = body.get("drain")
        await plane.stop_unit(str(body["unit"]), None if drain is None else float(drain))
        return JSONResponse({"version": plane.units_version, "units": plane.units_json()})

    async def listeners(request: Request) -> JSONResponse:
        body = await request.json()
        wanted = {str(k): int(v) for k, v in body["services"].items()}
        # `protocols` came later (issue 12): a daemon that does not send it gets HTTP/1.1.
        protocols = {str(k): str(v) for k, v in (body.get("protocols") or {}).items()}
        for service, protocol in protocols.items():
            if protocol not in PROTOCOLS:
                raise _BadRequest(f"protocols.{service}: {protocol!r} is not one of "
                                  f"{', '.join(PROTOCOLS)}")
        problems = await plane.set_listeners(wanted, protocols)
        # `preview` (issue 14): {"port": N, "fallback": bool} serves the preview edge, null or
        # absent stops it.
        preview = body.get("preview")
        if preview is not None:
            if not isinstance(preview, dict) or not isinstance(preview.get("port"), int):
                raise _BadRequest("preview: must be {\"port\": N, \"fallback\": true|false}")
            problem = await plane.set_edge(int(preview["port"]), bool(preview.get("fallback")))
        else:
            problem = await plane.set_edge(None, False)
        if problem:
            problems.append(problem)
        if problems:
            return _error(409, "port_in_use", "; ".join(problems))
        return JSONResponse({"listeners": dict(plane.router.ports),
                             "protocols": plane.listener_protocols(),
                             "preview": plane.router.edge.port if plane.router.edge else None})

    async def put_routes(request: Request) -> JSONResponse:
        table = RouteTable.from_json(await request.json())
        return JSONResponse({"version": plane.apply_routes(table)})

    async def routes(request: Request) -> JSONResponse:
        raw = request.query_params.get("since")
        since = int(_number(request, "since", 0)) if raw is not None else None
        wait = min(_number(request, "wait", 0), MAX_WAIT)
        update = await plane.feed.next_update(since, wait) if wait else \
            plane.feed.changes_since(since)
        return JSONResponse(update_to_json(update, plane.feed.version))

    async def hops(request: Request) -> JSONResponse:
        since = int(_number(request, "since", 0))
        await plane.hops.wait(since, min(_number(request, "wait", 0), MAX_WAIT))
        # Rows, at most 2,000 an answer: the encoding runs on the routers' event loop (20,000
        # records as objects held it for over 100 ms); the reader asks again for the rest.
        found, last, dropped = plane.hops.after(since, limit=HOPS_PER_ANSWER)
        return JSONResponse({"seq": last, "dropped": dropped, "fields": ROW_FIELDS,
                             "rows": found})

    async def shutdown(request: Request) -> JSONResponse:
        plane.stop_requested.set()
        return JSONResponse({"stopping": True}, status_code=202)

    app = Starlette(routes=[
        Route("/v1/state", state),
        Route("/v1/units", units),
        Route("/v1/units/start", start_unit, methods=["POST"]),
        Route("/v1/units/stop", stop_unit, methods=["POST"]),
        Route("/v1/listeners", listeners, methods=["PUT"]),
        Route("/v1/routes", put_routes, methods=["PUT"]),
        Route("/v1/routes", routes, methods=["GET"]),
        Route("/v1/hops", hops),
        Route("/v1/shutdown", shutdown, methods=["POST"]),
    ], exception_handlers={_BadRequest: _bad_request})
    app.add_middleware(_Auth, full=f"Bearer {token}".encode(),
                       reader=f"Bearer {plane.routes_token}".encode())
    return app
