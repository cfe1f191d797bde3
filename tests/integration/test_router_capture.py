"""Capture by key (issue 13, item 3): a key in the table's `captured` set is captured at every
service, over HTTP/1.1 and HTTP/2 alike (gRPC with its trailers), whether or not the service
is in `router.capture_services`; other requests are not; the set follows the feed's changes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from grpc import aio

from laneway.core.hops import Hop
from laneway.core.routes import ForkRoute, RouteTable, Upstream, apply_changes, diff_tables
from laneway.router import Router, RouterSettings
from tests.grpcapps import EchoServer, keyed, method
from tests.upstreams import TestUpstream, collect_hops

KEY = "abc123def456"
OTHER = "0ther0ther00"


@dataclass
class Captured:
    router: Router
    http: int
    grpc: int
    hops: list[Hop]

    async def hops_for(self, count: int) -> list[Hop]:
        for _ in range(200):
            self.router.recorder.flush()
            if len(self.hops) >= count:
                break
            await asyncio.sleep(0.01)
        return sorted(self.hops, key=lambda h: h.at)


@pytest.fixture
async def captured() -> AsyncIterator[Captured]:
    web = TestUpstream("web")
    await web.start()
    fork = TestUpstream("web-fork")
    await fork.start()
    echo = await EchoServer("baseline").start()
    hops: list[Hop] = []
    router = Router(RouterSettings(), hop_sink=collect_hops(hops))
    http = await router.listen("web", 0)
    grpc = await router.listen("pricing", 0, protocol="grpc")
    table = RouteTable(version=1, baseline={"web": Upstream("127.0.0.1", web.port),
                                            "pricing": Upstream("127.0.0.1", echo.port)},
                       captured=frozenset({KEY}))
    # The key forks web only: at pricing it falls back to the baseline, and is captured there
    # too (a sandbox's capture follows its key everywhere).
    table.forks["web"] = {KEY: ForkRoute("web", "sb", Upstream("127.0.0.1", fork.port), True,
                                         fork="web@sb#1")}
    router.apply(table)
    yield Captured(router, http, grpc, hops)
    await router.close()
    await web.stop()
    await fork.stop()
    await echo.stop()


async def test_a_captured_key_is_captured_over_http1_and_nothing_else_is(
        captured: Captured) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{captured.http}") as client:
        keyed_answer = await client.post("/echo", content=b"hello",
                                         headers={"baggage": f"laneway-key={KEY}",
                                                  "authorization": "Bearer s3cret"})
        await client.get("/plain")
        await client.get("/other", headers={"baggage": f"laneway-key={OTHER}"})
    assert keyed_answer.content == b"hello"
    hops = await captured.hops_for(3)
    by_path = {h.path: h for h in hops}
    assert by_path["/plain"].capture is None
    assert by_path["/other"].capture is None
    record = by_path["/echo"].capture
    assert record is not None
    assert record["id"].startswith("c")
    assert record["request"]["method"] == "POST"
    assert record["request"]["body"] == "hello"
    assert record["response"]["status"] == 200
    assert record["response"]["body"] == "hello"
    auth = dict(record["request"]["headers"])["authorization"]
    assert auth.startswith("redacted:")
    assert "s3cret" not in auth
    assert by_path["/echo"].destination == "sb"


async def test_http2_requests_of_a_captured_key_are_captured(captured: Captured) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{captured.http}", http1=False,
                                 http2=True) as client:
        answer = await client.post("/echo", content=b"over h2",
                                   headers={"baggage": f"laneway-key={KEY}"})
        await client.get("/plain")
    assert answer.http_version == "HTTP/2"
    hops = await captured.hops_for(2)
    by_path = {h.path: h for h in hops}
    assert by_path["/plain"].capture is None
    record = by_path["/echo"].capture
    assert record is not None
    assert record["request"]["target"] == "/echo"
    assert record["request"]["body"] == "over h2"
    assert (record["response"]["status"], record["response"]["body"]) == (200, "over h2")
    assert "baggage" in dict(record["request"]["headers"])
    assert not any(name.startswith(":") for name, _ in record["request"]["headers"])


async def test_grpc_calls_are_captured_with_their_trailers(captured: Captured) -> None:
    async with aio.insecure_channel(f"127.0.0.1:{captured.grpc}") as channel:
        answer = await method(channel, "Unary")({"item": "book"}, metadata=keyed(KEY))
        await method(channel, "Unary")({"item": "plain"})
    assert answer["server"] == "baseline"
    hops = await captured.hops_for(2)
    records = [h.capture for h in hops if h.capture is not None]
    assert len(records) == 1
    record = records[0]
    assert record["grpc"] is True
    assert record["request"]["target"] == "/test.Echo/Unary"
    assert dict(record["trailers"])["grpc-status"] == "0"
    # The body is the gRPC frames, kept byte for byte (latin-1): the message is inside.
    assert json.dumps({"item": "book"}).encode() in record["request"]["body"].encode("latin-1")


async def test_the_captured_set_follows_the_feed(captured: Captured) -> None:
    old = captured.router.table
    new = RouteTable(version=old.version + 1, baseline=dict(old.baseline),
                     forks={s: dict(k) for s, k in old.forks.items()},
                     captured=frozenset({OTHER}))
    changes = diff_tables(old, new)
    assert changes.captured == frozenset({OTHER})
    # Through JSON, as a remote router receives it.
    wire = type(changes).from_json(json.loads(json.dumps(changes.to_json())))
    captured.router.apply([wire])
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{captured.http}") as client:
        await client.get("/was", headers={"baggage": f"laneway-key={KEY}"})
        await client.get("/now", headers={"baggage": f"laneway-key={OTHER}"})
    hops = await captured.hops_for(2)
    by_path = {h.path: h for h in hops}
    assert by_path["/was"].capture is None
    assert by_path["/now"].capture is not None


def test_changes_without_a_new_captured_set_leave_it_alone() -> None:
    table = RouteTable(version=1, captured=frozenset({KEY}))
    same = RouteTable(version=2, baseline={"web": Upstream("127.0.0.1", 1)},
                      captured=frozenset({KEY}))
    changes = diff_tables(table, same)
    assert changes.captured is None
    assert "captured" not in changes.to_json()
    apply_changes(table, changes)
    assert table.captured == frozenset({KEY})
    cleared = RouteTable(version=3, baseline=dict(same.baseline))
    changes = diff_tables(table, cleared)
    assert changes.captured == frozenset()
    assert not changes.empty
    apply_changes(table, changes)
    assert table.captured == frozenset()
    assert RouteTable.from_json(json.loads(json.dumps(same.to_json()))).captured == {KEY}
