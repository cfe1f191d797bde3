"""currency: GET /convert?usd=&to= converts with fixed rates (the end of the chain)."""

from __future__ import annotations

from common import VERSION, serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

RATES = {"USD": 1.0, "EUR": 0.92, "GBP": 0.79, "JPY": 151.0}


async def convert(request: Request) -> JSONResponse:
    usd = float(request.query_params["usd"])
    to = request.query_params.get("to", "EUR").upper()
    if to not in RATES:
        return JSONResponse({"error": f"unknown currency {to}"}, status_code=400)
    return JSONResponse({"amount": round(usd * RATES[to], 2), "currency": to,
                         "currency_service": VERSION})


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


serve(Starlette(routes=[Route("/convert", convert), Route("/healthz", health)]))
