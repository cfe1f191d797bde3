"""A `protocol: h2c` service (its processes speak HTTP/2 only): HTTP/1.1 clients and h2c clients
alike reach it through the router over HTTP/2, routed by the key; bodies both ways, HEAD and
204, a large upload and download within flow control."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from laneway.core.routes import ForkRoute, RouteTable, Upstream
from laneway.router import Router, RouterSettings
from tests.h2server import H2Origin

KEY = "abc123def456"


@dataclass
class H2c:
    router: Router
    url: str
    port: int
    baseline: H2Origin
    fork: H2Origin


@pytest.fixture
async def h2c() -> AsyncIterator[H2c]:
    baseline = await H2Origin("baseline").start()
    fork = await H2Origin("fork").start()
    router = Router(RouterSettings())
    port = await router.listen("api", 0, protocol="h2c")
    table = RouteTable(version=1, baseline={"api": Upstream("127.0.0.1", baseline.port)})
    table.forks["api"] = {KEY: ForkRoute("api", "sb", Upstream("127.0.0.1", fork.port), True,
                                         fork="api@sb#1")}
    router.apply(table)
    yield H2c(router, f"http://127.0.0.1:{port}", port, baseline, fork)
    await router.close()
    await baseline.stop()
    await fork.stop()


async def test_http1_clients_reach_an_h2c_service_routed_by_key(h2c: H2c) -> None:
    async with httpx.AsyncClient(base_url=h2c.url) as client:
        plain = await client.get("/hello?x=1", headers={"x-custom": "v"})
        keyed = await client.get("/hello", headers={"baggage": f"laneway-key={KEY}"})
        head = await client.head("/hello")
        empty = await client.get("/empty")
    assert plain.status_code == 200
    assert plain.json()["server"] == "baseline"
    assert plain.json()["path"] == "/hello?x=1"
    assert plain.json()["headers"]["x-custom"] == "v"
    assert plain.json()["headers"][":authority"] == f"127.0.0.1:{h2c.port}"
    assert plain.headers["laneway-served-by"] == "api"
    assert keyed.json()["server"] == "fork"
    assert keyed.headers["laneway-served-by"] == "api@sb"
    assert (head.status_code, head.content) == (200, b"")
    assert (empty.status_code, empty.content) == (204, b"")
    # One HTTP/2 connection carried them all to each origin (pooled, multiplexed).
    assert len(h2c.router.h2pool._conns[Upstream("127.0.0.1", h2c.baseline.port)]) == 1


async def test_large_bodies_both_ways_chunked_and_with_a_length(h2c: H2c) -> None:
    body = bytes(range(256)) * 16384  # 4 MiB, beyond every window
    async with httpx.AsyncClient(base_url=h2c.url, timeout=30) as client:
        echoed = await client.post("/echo", content=body)

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(body), 100_000):
                yield body[i:i + 100_000]

        streamed = await client.post("/echo", content=chunks())
    assert echoed.content == body
    assert streamed.content == body
    methods = [(r["method"], r["body_bytes"]) for r in h2c.baseline.requests]
    assert methods == [("POST", len(body)), ("POST", len(body))]


async def test_curl_with_prior_knowledge_to_an_h2c_service(h2c: H2c) -> None:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--http2-prior-knowledge", "-i", "-H", f"baggage: laneway-key={KEY}",
        "-d", "x" * 50_000, f"{h2c.url}/upload", stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 10)
    text = out.decode("latin-1")
    assert text.startswith("HTTP/2 200"), text[:300]
    assert "laneway-served-by: api@sb" in text
    answer = json.loads(text.split("\r\n\r\n", 1)[1])
    assert (answer["server"], answer["body_bytes"]) == ("fork", 50_000)


async def test_an_h2c_service_that_is_down_is_a_502_naming_it() -> None:
    router = Router(RouterSettings())
    port = await router.listen("api", 0, protocol="h2c")
    router.apply(RouteTable(version=1, baseline={"api": Upstream("127.0.0.1", 1)}))
    try:
        async with httpx.AsyncClient() as client:
            answer = await client.get(f"http://127.0.0.1:{port}/")
        assert answer.status_code == 502
        assert answer.json()["error"] == "upstream_refused"
        assert "baseline service api" in answer.json()["message"]
    finally:
        await router.close()
