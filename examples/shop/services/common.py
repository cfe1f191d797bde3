"""What every demo service shares: OpenTelemetry set-up, serving on $PORT, and the JSON codec of
the one gRPC method (pricing's Quote, which orders calls).

Only the official OpenTelemetry packages are used: the ASGI middleware extracts `traceparent`
and `baggage` from each HTTP request and the gRPC server interceptor from each call's metadata;
the httpx and gRPC client instrumentations inject them into outgoing calls. No laneway code is
needed in the services for routing to work.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from typing import Any

import grpc
import httpx
import uvicorn
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.instrumentation.grpc import (
    GrpcAioInstrumentorClient,
    GrpcAioInstrumentorServer,
)
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from starlette.applications import Starlette

SERVICE = os.environ.get("LANEWAY_SERVICE", "service")
VERSION = "fork of " + os.environ["LANEWAY_SANDBOX"] if os.environ.get("LANEWAY_SANDBOX") \
    else "baseline"

logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {SERVICE} %(levelname)s %(message)s")
log = logging.getLogger(SERVICE)

# pricing's one gRPC method. Its messages are JSON objects rather than protobuf so that the demo
# needs no code-generation step (grpcio-tools, generated *_pb2.py files): on the wire it is
# still gRPC (HTTP/2, length-prefixed messages, `grpc-status` trailers, metadata), which is all
# that routing and OpenTelemetry's propagation look at.
PRICING_SERVICE = "shop.Pricing"
QUOTE = f"/{PRICING_SERVICE}/Quote"


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


def decode(data: bytes) -> dict[str, Any]:
    message = json.loads(data)
    if not isinstance(message, dict):
        raise TypeError(f"expected a JSON object, got {type(message).__name__}")
    return message


def setup_tracing() -> None:
    # A real SDK provider so that trace ids are created and propagated; no exporter is needed
    # for the demo (laneway reads the trace id from `traceparent` at every hop).
    trace.set_tracer_provider(TracerProvider(resource=Resource.create({"service.name": SERVICE})))
    HTTPXClientInstrumentor().instrument()
    # These patch grpc.aio.insecure_channel / grpc.aio.server, so they must run before any
    # channel or server is created.
    GrpcAioInstrumentorClient().instrument()
    GrpcAioInstrumentorServer().instrument()


_clients: list[httpx.AsyncClient] = []


def client() -> httpx.AsyncClient:
    """One pooled client per process (keep-alive to the next hop's router)."""
    if not _clients:
        _clients.append(httpx.AsyncClient(timeout=10.0))
    return _clients[0]


def serve(app: Starlette) -> None:
    """Serve an HTTP service on $PORT."""
    setup_tracing()
    port = int(os.environ["PORT"])
    log.info("starting (%s) on port %d", VERSION, port)
    uvicorn.run(OpenTelemetryMiddleware(app), host="127.0.0.1", port=port, log_level="warning")


def serve_grpc(handler: grpc.GenericRpcHandler, service: str) -> None:
    """Serve a gRPC service on $PORT, with the standard health service (grpc.health.v1) that
    laneway's `health: grpc` check asks."""
    setup_tracing()
    asyncio.run(_serve_grpc(handler, service, int(os.environ["PORT"])))


async def _serve_grpc(handler: grpc.GenericRpcHandler, service: str, port: int) -> None:
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    for name in ("", service):  # "" is the whole server, what plain `health: grpc` asks about
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("starting (%s) on port %d (gRPC)", VERSION, port)

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    # Shutdown: report NOT_SERVING, stop accepting calls, let in-flight ones finish (5 s).
    await health_servicer.enter_graceful_shutdown()
    await server.stop(grace=5.0)
    for http in _clients:
        await http.aclose()
