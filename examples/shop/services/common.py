"""What every demo service shares: OpenTelemetry set-up and serving on $PORT.

Only the official OpenTelemetry packages are used: the ASGI middleware extracts `traceparent`
and `baggage` from each request, the httpx instrumentation injects them into outgoing calls. No
laneway code is needed in the services for routing to work.
"""

from __future__ import annotations

import logging
import os

import httpx
import uvicorn
from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from starlette.applications import Starlette

SERVICE = os.environ.get("LANEWAY_SERVICE", "service")
VERSION = "fork of " + os.environ["LANEWAY_SANDBOX"] if os.environ.get("LANEWAY_SANDBOX") \
    else "baseline"

logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {SERVICE} %(levelname)s %(message)s")
log = logging.getLogger(SERVICE)


def setup_tracing() -> None:
    # A real SDK provider so that trace ids are created and propagated; no exporter is needed
    # for the demo (laneway reads the trace id from `traceparent` at every hop).
    trace.set_tracer_provider(TracerProvider(resource=Resource.create({"service.name": SERVICE})))
    HTTPXClientInstrumentor().instrument()


_clients: list[httpx.AsyncClient] = []


def client() -> httpx.AsyncClient:
    """One pooled client per process (keep-alive to the next hop's router)."""
    if not _clients:
        _clients.append(httpx.AsyncClient(timeout=10.0))
    return _clients[0]


def serve(app: Starlette) -> None:
    setup_tracing()
    port = int(os.environ["PORT"])
    log.info("starting (%s) on port %d", VERSION, port)
    uvicorn.run(OpenTelemetryMiddleware(app), host="127.0.0.1", port=port, log_level="warning")
