"""orders: GET /quote?item=&currency= asks pricing (over gRPC) for the unit price and totals a
quote.

The gRPC channel is instrumented by OpenTelemetry (common.setup_tracing), which puts the current
`traceparent` and `baggage` on each call's metadata; laneway's router at pricing's port reads the
routing key from there, as it does from an HTTP header.
"""

from __future__ import annotations

import os
from typing import Any

import grpc
from common import QUOTE, VERSION, decode, encode, log, serve
from opentelemetry import baggage, context
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

PRICING = os.environ["PRICING_ADDR"]  # a gRPC target: host:port, no scheme
PRICING_DEADLINE = 5.0  # seconds for the whole call, currency's conversion included

# The HTTP answer orders gives when the call to pricing fails; anything else is a 502.
HTTP_STATUS_FOR = {
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAVAILABLE: 503,  # e.g. laneway's router when a fork has crashed
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

_quotes: list[grpc.aio.UnaryUnaryMultiCallable] = []


def pricing_quote() -> grpc.aio.UnaryUnaryMultiCallable:
    """One channel per process, created inside the server's event loop (grpc.aio binds to it)."""
    if not _quotes:
        channel = grpc.aio.insecure_channel(PRICING)
        _quotes.append(channel.unary_unary(QUOTE, request_serializer=encode,
                                           response_deserializer=decode))
    return _quotes[0]


async def quote(request: Request) -> JSONResponse:
    item = request.query_params["item"]
    currency = request.query_params.get("currency", "EUR")
    qty = int(request.query_params.get("qty", "2"))
    try:
        price: dict[str, Any] = await pricing_quote()(
            {"item": item, "currency": currency}, timeout=PRICING_DEADLINE)
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        log.warning("pricing %s failed: %s %s", QUOTE, code.name, exc.details())
        return JSONResponse({"error": f"pricing failed: gRPC {code.name}",
                             "grpc_status": code.value[0], "detail": exc.details()},
                            status_code=HTTP_STATUS_FOR.get(code, 502))
    return JSONResponse({"item": item, "qty": qty, "unit": price["amount"],
                         "total": round(price["amount"] * qty, 2), "currency": currency,
                         "pricing": price, "orders": VERSION})


async def quote_v1(request: Request) -> JSONResponse:
    """The legacy quote: its outbound call runs in a fresh context without baggage, so the
    trace goes on but the routing key is lost (a propagation leak `laneway leaks` names)."""
    token = context.attach(baggage.clear())
    try:
        return await quote(request)
    finally:
        context.detach(token)


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


serve(Starlette(routes=[Route("/quote", quote), Route("/quote-v1", quote_v1),
                        Route("/healthz", health)]))
