"""Hop A of the OpenTelemetry chain test: a Starlette app under real OpenTelemetry instrumentation.

Incoming requests go through opentelemetry-instrumentation-asgi's OpenTelemetryMiddleware and the
call to $NEXT_URL through httpx instrumented by HTTPXClientInstrumentor, with the global
propagator set to TraceContext + W3C Baggage and an SDK TracerProvider: the routing key travels
in the baggage OpenTelemetry extracts and injects, never copied by hand. `GET /` answers
`{"service", "version", "next"}` from $LANEWAY_SERVICE, $VERSION and the next hop's body;
`/healthz` is the health check. Served by uvicorn on 127.0.0.1:$PORT.
"""

from __future__ import annotations

import os

import httpx
import uvicorn
from opentelemetry import trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.propagate import set_global_textmap
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

NAME = os.environ.get("LANEWAY_SERVICE", "?")
VERSION = os.environ.get("VERSION", "baseline")
NEXT = os.environ.get("NEXT_URL", "")

set_global_textmap(CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()]))
trace.set_tracer_provider(TracerProvider())
HTTPXClientInstrumentor().instrument()

CLIENT = httpx.AsyncClient(timeout=10)  # created after instrument(): its transport is instrumented


async def index(request: Request) -> JSONResponse:
    nxt = None
    if NEXT:
        resp = await CLIENT.get(NEXT.rstrip("/") + "/")
        resp.raise_for_status()
        nxt = resp.json()
    return JSONResponse({"service": NAME, "version": VERSION, "next": nxt})


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


app = OpenTelemetryMiddleware(Starlette(routes=[Route("/", index), Route("/healthz", healthz)]))

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning")
