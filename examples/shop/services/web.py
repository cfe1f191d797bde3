"""web: the entry point. GET /buy?item=book&currency=EUR asks orders for a quote."""

from __future__ import annotations

import os

from common import VERSION, client, log, serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

ORDERS = os.environ["ORDERS_URL"]


async def buy(request: Request) -> JSONResponse:
    item = request.query_params.get("item", "book")
    currency = request.query_params.get("currency", "EUR")
    resp = await client().get(f"{ORDERS}/quote", params={"item": item, "currency": currency})
    if resp.status_code != 200:
        log.error("orders answered %d for %s", resp.status_code, item)
        return JSONResponse({"error": "orders failed", "detail": resp.json()}, status_code=502)
    quote = resp.json()
    return JSONResponse({"message": f"{quote['qty']} x {item}: {quote['total']} {currency}",
                         "web": VERSION, "quote": quote})


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


serve(Starlette(routes=[Route("/buy", buy), Route("/healthz", health)]))
