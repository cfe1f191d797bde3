"""pricing: the gRPC method shop.Pricing/Quote {item, currency} reads the list price from its
SQLite catalog, applies PRICING_DISCOUNT (percent), waits PRICING_DELAY_MS (a slower approach)
and asks currency (over HTTP) to convert it.

OpenTelemetry's gRPC server interceptor makes the call's `baggage` metadata the current context,
so the httpx call to currency carries the routing key on: a fork of pricing calls the baseline
currency with the key still on the request.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path
from typing import Any

import grpc
from common import PRICING_SERVICE, VERSION, client, decode, encode, log, serve_grpc

CURRENCY = os.environ["CURRENCY_URL"]
DISCOUNT = float(os.environ.get("PRICING_DISCOUNT", "0"))
# The name of the answer's discount field: a fork that renames it breaks a contract (the demo's
# `laneway run --diff` shows it red).
DISCOUNT_FIELD = os.environ.get("PRICING_DISCOUNT_FIELD", "discount")
# Extra time per quote: a slower approach (the demo's experiment shows it failing its latency
# budget under load).
DELAY_S = float(os.environ.get("PRICING_DELAY_MS", "0")) / 1000
DB = Path(os.environ.get("PRICING_DB", "pricing.db"))
CATALOG = {"book": 12.5, "lamp": 40.0, "mug": 8.0}


def open_catalog() -> sqlite3.Connection:
    DB.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(DB)
    db.execute("CREATE TABLE IF NOT EXISTS catalog (item TEXT PRIMARY KEY, usd REAL NOT NULL)")
    db.executemany("INSERT OR IGNORE INTO catalog VALUES (?, ?)", CATALOG.items())
    db.commit()
    return db


catalog = open_catalog()


async def quote(request: dict[str, Any], context: grpc.aio.ServicerContext) -> dict[str, Any]:
    item = str(request.get("item", ""))
    currency = str(request.get("currency", "EUR"))
    row = catalog.execute("SELECT usd FROM catalog WHERE item = ?", (item,)).fetchone()
    if row is None:
        log.warning("unknown item %r", item)
        await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown item {item!r}")
    usd = row[0] * (1 - DISCOUNT / 100)
    if DELAY_S:
        await asyncio.sleep(DELAY_S)
    # The caller's deadline bounds the call to currency too: past it, nobody reads the answer.
    remaining = context.time_remaining()
    resp = await client().get(f"{CURRENCY}/convert", params={"usd": usd, "to": currency},
                              timeout=10.0 if remaining is None else max(remaining, 0.001))
    if resp.status_code != 200:
        code = grpc.StatusCode.INVALID_ARGUMENT if resp.status_code == 400 \
            else grpc.StatusCode.UNAVAILABLE
        await context.abort(code, f"currency answered {resp.status_code}: {resp.text}")
    converted = resp.json()
    return {"item": item, "amount": converted["amount"], "currency": currency,
            DISCOUNT_FIELD: f"{DISCOUNT:g}%", "pricing": VERSION}


serve_grpc(grpc.method_handlers_generic_handler(PRICING_SERVICE, {
    "Quote": grpc.unary_unary_rpc_method_handler(
        quote, request_deserializer=decode, response_serializer=encode),
}), PRICING_SERVICE)
