"""web: the entry point. GET /buy?item=book&currency=EUR asks orders for a quote; GET / is the
shop's page, which asks /buy with `fetch()` (opened at a sandbox's preview URL, the page's
requests carry the sandbox's key, so the quote on it is the sandbox's)."""

from __future__ import annotations

import os

from common import VERSION, client, log, serve
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
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


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>shop</title><link rel="icon" href="data:,">
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font:18px/1.5 system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem}
#quote{font-size:1.6rem;font-weight:600}</style></head>
<body><main><h1>The shop</h1>
<label for="item">Item</label>
<select id="item"><option>book</option><option>pen</option><option>lamp</option></select>
<p>Your quote: <output id="quote" aria-live="polite">…</output></p>
<script>
async function quote() {
  const item = document.getElementById("item").value;
  const resp = await fetch("/buy?item=" + encodeURIComponent(item) + "&currency=EUR");
  const data = await resp.json();
  document.getElementById("quote").textContent =
    resp.ok ? data.message : "error: " + (data.error || resp.status);
}
document.getElementById("item").addEventListener("change", quote);
quote();
</script></main></body></html>
"""


async def page(request: Request) -> HTMLResponse:
    return HTMLResponse(PAGE)


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


serve(Starlette(routes=[Route("/", page), Route("/buy", buy), Route("/healthz", health)]))
