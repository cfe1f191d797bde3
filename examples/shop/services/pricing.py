"""pricing: GET /price?item=&currency= reads the list price from its SQLite catalog, applies
PRICING_DISCOUNT (percent), and asks currency to convert it."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from common import VERSION, client, log, serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

CURRENCY = os.environ["CURRENCY_URL"]
DISCOUNT = float(os.environ.get("PRICING_DISCOUNT", "0"))
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


async def price(request: Request) -> JSONResponse:
    item = request.query_params["item"]
    currency = request.query_params.get("currency", "EUR")
    row = catalog.execute("SELECT usd FROM catalog WHERE item = ?", (item,)).fetchone()
    if row is None:
        log.warning("unknown item %r", item)
        return JSONResponse({"error": f"unknown item {item!r}"}, status_code=404)
    usd = row[0] * (1 - DISCOUNT / 100)
    resp = await client().get(f"{CURRENCY}/convert", params={"usd": usd, "to": currency})
    converted = resp.json()
    return JSONResponse({"item": item, "amount": converted["amount"], "currency": currency,
                         "discount": f"{DISCOUNT:g}%", "pricing": VERSION})


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


serve(Starlette(routes=[Route("/price", price), Route("/healthz", health)]))
