"""The router picks the `laneway-key` member the OpenTelemetry SDKs propagate (the last) and
marks the hop when the members disagree, across one or several `baggage` headers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from laneway.core.hops import Hop
from laneway.core.routes import ForkRoute, RouteTable, Upstream
from laneway.router import Router, RouterSettings
from tests.upstreams import TestUpstream, collect_hops

KEY = "abc123def456"


@pytest.fixture
async def routed(upstream: TestUpstream,
                 fork_upstream: TestUpstream) -> AsyncIterator[tuple[str, list[Hop], Router]]:
    hops: list[Hop] = []
    router = Router(RouterSettings(), hop_sink=collect_hops(hops))
    port = await router.listen("pricing", 0)
    table = RouteTable(version=1, baseline={"pricing": Upstream("127.0.0.1", upstream.port)})
    table.forks["pricing"] = {KEY: ForkRoute("pricing", "sb-a",
                                             Upstream("127.0.0.1", fork_upstream.port), True,
                                             fork="pricing@sb-a#1")}
    router.apply(table)
    yield f"http://127.0.0.1:{port}", hops, router
    await router.close()


async def _hops_for(hops: list[Hop], router: Router, count: int) -> list[Hop]:
    for _ in range(100):
        router.recorder.flush()
        if len(hops) >= count:
            break
        await asyncio.sleep(0.02)
    return hops


async def test_last_member_decides_and_a_disagreement_is_marked(
        routed: tuple[str, list[Hop], Router]) -> None:
    url, hops, router = routed
    async with httpx.AsyncClient(base_url=url) as client:
        last_is_fork = await client.get("/", headers={
            "baggage": f"laneway-key=other,a=1,laneway-key={KEY}"})
        last_is_other = await client.get("/", headers={
            "baggage": f"laneway-key={KEY},laneway-key=other"})
        same_twice = await client.get("/", headers={
            "baggage": f"laneway-key={KEY},laneway-key={KEY}%3Bttl%3D60"})
        over_two_headers = await client.get("/", headers=[
            ("baggage", "laneway-key=other"), ("baggage", f"b=2, laneway-key={KEY};p=1")])
    assert last_is_fork.headers["laneway-served-by"] == "pricing@sb-a"
    assert last_is_other.headers["laneway-served-by"] == "pricing"
    assert same_twice.headers["laneway-served-by"] == "pricing@sb-a"
    assert over_two_headers.headers["laneway-served-by"] == "pricing@sb-a"
    recorded = await _hops_for(hops, router, 4)
    assert [(h.routing_key, h.key_conflict) for h in recorded] == [
        (KEY, True), ("other", True), (KEY, False), (KEY, True)]
