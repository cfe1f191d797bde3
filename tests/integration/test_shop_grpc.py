"""The shop's gRPC hop without laneway in between: the real orders and pricing programs
(examples/shop/services) as processes on loopback, orders calling pricing over gRPC and pricing
calling a recording stand-in for currency over HTTP.

What laneway's routing relies on is checked here at its source: OpenTelemetry's gRPC client
instrumentation puts the request's `baggage` on the call's metadata, the server instrumentation
makes it pricing's context, and pricing's HTTP call carries the key on (with the trace id).
Also: the fork's settings change the answer, gRPC errors become clear HTTP errors at orders,
pricing answers `grpc.health.v1` as `health: grpc` asks, and it stops on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from laneway.runtime.local.health import check_health
from tests.e2e.conftest import free_ports

SERVICES = Path(__file__).parents[2] / "examples" / "shop" / "services"
K = "abc123def456"
STARTUP_S = 20.0


class RecordingCurrency:
    """Answers currency's GET /convert?usd=&to= (EUR at 0.5) and records each request's
    query and headers."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], dict[str, str]]] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                target = head[0].split(" ")[1]
                query = {k: v[0] for k, v in parse_qs(urlsplit(target).query).items()}
                headers = {n.strip().lower(): v.strip()
                           for n, _, v in (line.partition(":") for line in head[1:] if line)}
                self.requests.append((query, headers))
                body = json.dumps({"amount": round(float(query["usd"]) * 0.5, 2),
                                   "currency": query["to"]}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%b" % (len(body), body))
                await writer.drain()
        writer.close()


async def start(program: str, port: int, env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, str(SERVICES / program),
        env={**os.environ, "PORT": str(port), "LANEWAY_SERVICE": program.removesuffix(".py"),
             **env},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)


async def wait_until(check: Callable[[], Awaitable[str | None]], what: str) -> None:
    deadline = time.monotonic() + STARTUP_S
    while (problem := await check()) is not None:
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not healthy within {STARTUP_S:g}s: {problem}")
        await asyncio.sleep(0.05)


async def stop(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return await asyncio.wait_for(proc.wait(), 10)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError("did not stop within 10 s of SIGTERM") from None


class Shop:
    def __init__(self, currency: RecordingCurrency, orders_port: int,
                 pricing: asyncio.subprocess.Process, pricing_port: int) -> None:
        self.currency = currency
        self.orders = f"http://127.0.0.1:{orders_port}"
        self.pricing = pricing
        self.pricing_port = pricing_port


@contextlib.asynccontextmanager
async def running_shop(tmp_path: Path, pricing_env: dict[str, str] | None = None,
                       pricing_addr: str | None = None) -> AsyncIterator[Shop]:
    currency = RecordingCurrency()
    await currency.start()
    pricing_port, orders_port = free_ports(2)
    procs: list[asyncio.subprocess.Process] = []
    try:
        procs.append(await start("pricing.py", pricing_port, {
            "CURRENCY_URL": f"http://127.0.0.1:{currency.port}",
            "PRICING_DB": str(tmp_path / "pricing.db"), **(pricing_env or {})}))
        procs.append(await start("orders.py", orders_port, {
            "PRICING_ADDR": pricing_addr or f"127.0.0.1:{pricing_port}"}))
        await wait_until(lambda: check_health(pricing_port, "grpc:shop.Pricing"), "pricing")
        await wait_until(lambda: check_health(orders_port, "/healthz"), "orders")
        yield Shop(currency, orders_port, procs[0], pricing_port)
    finally:
        for proc in procs:
            await stop(proc)
        await currency.stop()


async def test_the_key_crosses_the_grpc_hop_and_goes_on_over_http(tmp_path: Path) -> None:
    trace_id = secrets.token_hex(16)
    async with running_shop(tmp_path) as shop, httpx.AsyncClient(timeout=10) as http:
        resp = await http.get(f"{shop.orders}/quote", params={"item": "book"}, headers={
            "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01",
            "baggage": f"laneway-key={K}"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["pricing"] == {"item": "book", "amount": 6.25, "currency": "EUR",
                                          "discount": "0%", "pricing": "baseline"}
        [(query, headers)] = shop.currency.requests
        assert query == {"usd": "12.5", "to": "EUR"}
        assert headers["baggage"] == f"laneway-key={K}"
        assert headers["traceparent"].split("-")[1] == trace_id

        # The legacy quote clears the baggage before calling pricing: the trace goes on over
        # gRPC, the key does not (the leak `laneway leaks` names in the demo).
        resp = await http.get(f"{shop.orders}/quote-v1", params={"item": "mug"}, headers={
            "traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01",
            "baggage": f"laneway-key={K}"})
        assert resp.status_code == 200, resp.text
        _, headers = shop.currency.requests[1]
        assert "laneway-key" not in headers.get("baggage", "")
        assert headers["traceparent"].split("-")[1] == trace_id


async def test_the_forks_settings_give_the_discounted_price(tmp_path: Path) -> None:
    env = {"PRICING_DISCOUNT": "20", "LANEWAY_SANDBOX": "pricing-promo"}
    async with running_shop(tmp_path, env) as shop, httpx.AsyncClient(timeout=10) as http:
        resp = await http.get(f"{shop.orders}/quote", params={"item": "book"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["pricing"]["pricing"] == "fork of pricing-promo"
        assert resp.json()["pricing"]["discount"] == "20%"
        assert shop.currency.requests[0][0]["usd"] == "10.0"


async def test_grpc_errors_become_clear_http_errors(tmp_path: Path) -> None:
    async with running_shop(tmp_path) as shop, httpx.AsyncClient(timeout=10) as http:
        resp = await http.get(f"{shop.orders}/quote", params={"item": "piano"})
        assert resp.status_code == 404
        assert resp.json() == {"error": "pricing failed: gRPC NOT_FOUND", "grpc_status": 5,
                               "detail": "unknown item 'piano'"}
        assert shop.currency.requests == []

        assert await stop(shop.pricing) == 0  # SIGTERM: a clean exit
        assert await check_health(shop.pricing_port, "grpc") is not None
        resp = await http.get(f"{shop.orders}/quote", params={"item": "book"})
        assert resp.status_code == 503
        assert resp.json()["error"] == "pricing failed: gRPC UNAVAILABLE"
        assert resp.json()["grpc_status"] == 14
        assert f"127.0.0.1:{shop.pricing_port}" in resp.json()["detail"]


@pytest.mark.parametrize("health", ["grpc", "grpc:shop.Pricing"])
async def test_pricing_answers_the_grpc_health_check(tmp_path: Path, health: str) -> None:
    async with running_shop(tmp_path) as shop:
        assert await check_health(shop.pricing_port, health) is None
        assert "NOT_FOUND" in (await check_health(shop.pricing_port, "grpc:shop.Nope") or "")
