"""orders: GET /quote?item=&currency= asks pricing for the unit price and totals a quote."""

from __future__ import annotations

import os

from common import VERSION, client, serve
from opentelemetry import baggage, context
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

PRICING = os.environ["PRICING_URL"]


async def quote(request: Request) -> JSONResponse:
    item = request.query_params["item"]
    currency = request.query_params.get("currency", "EUR")
    qty = int(request.query_params.get("qty", "2"))
    resp = await client().get(f"{PRICING}/price", params={"item": item, "currency": currency})
    if resp.status_code != 200:
        return JSONResponse({"error": "pricing failed", "detail": resp.text},
                            status_code=resp.status_code)
    price = resp.json()
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
