"""The router on real sockets: a real origin server, real clients (httpx and raw bytes)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from laneway.core.hops import Hop
from laneway.core.routes import ForkRoute, RouteTable, Upstream
from laneway.router import Router, RouterSettings
from tests.upstreams import TestUpstream, collect_hops

KEY = "abc123def456"


class Setup:
    def __init__(self, router: Router, port: int, hops: list[Hop]) -> None:
        self.router = router
        self.port = port
        self.hops = hops
        self.url = f"http://127.0.0.1:{port}"


@pytest.fixture
async def routed(upstream: TestUpstream, fork_upstream: TestUpstream) -> AsyncIterator[Setup]:
    hops: list[Hop] = []
    router = Router(RouterSettings(extra_headers=("x-lane",), upstream_timeout=1.0,
                                   max_header_bytes=4096), hop_sink=collect_hops(hops))
    port = await router.listen("pricing", 0)
    table = RouteTable(version=1)
    table.baseline["pricing"] = Upstream("127.0.0.1", upstream.port)
    table.forks["pricing"] = {
        KEY: ForkRoute("pricing", "sb-a", Upstream("127.0.0.1", fork_upstream.port), True,
                       fork="pricing@sb-a#1"),
        "brokenkey123": ForkRoute("pricing", "sb-b", None, False,
                                  "fork pricing@sb-b is crashed: exited with code 1"),
    }
    router.apply(table)
    yield Setup(router, port, hops)
    await router.close()


async def _raw(port: int, data: bytes, *, until_close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    out = await asyncio.wait_for(reader.read(), 5) if until_close else b""
    writer.close()
    await writer.wait_closed()
    return out


async def test_unkeyed_goes_to_baseline_and_keyed_to_fork(routed: Setup) -> None:
    async with httpx.AsyncClient(base_url=routed.url) as client:
        plain = await client.get("/x")
        keyed = await client.get("/x", headers={"baggage": f"a=1, laneway-key={KEY};p=q"})
        other = await client.get("/x", headers={"baggage": f"laneway-key={KEY}x"})
    assert plain.json()["server"] == "baseline"
    assert plain.headers["laneway-served-by"] == "pricing"
    assert keyed.json()["server"] == "fork"
    assert keyed.headers["laneway-served-by"] == "pricing@sb-a"
    assert other.json()["server"] == "baseline"


async def test_tracestate_and_extra_header_select_the_fork(routed: Setup) -> None:
    async with httpx.AsyncClient(base_url=routed.url) as client:
        by_state = await client.get("/", headers={"tracestate": f"vendor=1,laneway={KEY}"})
        by_extra = await client.get("/", headers={"x-lane": KEY})
    assert by_state.json()["server"] == "fork"
    assert by_extra.json()["server"] == "fork"


async def test_broken_fork_is_503_naming_sandbox_and_reason(routed: Setup) -> None:
    async with httpx.AsyncClient(base_url=routed.url) as client:
        resp = await client.get("/", headers={"baggage": "laneway-key=brokenkey123"})
    assert resp.status_code == 503
    body = resp.json()
    assert body["sandbox"] == "sb-b"
    assert "exited with code 1" in body["message"]
    assert resp.headers["laneway-served-by"] == "pricing@sb-b"


async def test_hop_by_hop_headers_are_dropped_and_via_added(
    routed: Setup, upstream: TestUpstream
) -> None:
    async with httpx.AsyncClient(base_url=routed.url) as client:
        resp = await client.get("/", headers={"connection": "keep-alive, x-secret",
                                              "x-secret": "1", "te": "trailers",
                                              "keep-alive": "timeout=5", "x-kept": "yes"})
    sent = dict(upstream.requests[-1]["headers"])  # type: ignore[arg-type]
    assert "x-secret" not in sent
    assert "te" not in sent
    assert "keep-alive" not in sent
    assert sent["x-kept"] == "yes"
    assert sent["via"] == "1.1 laneway"
    assert "keep-alive" not in resp.headers  # the upstream's keep-alive is hop-by-hop too


async def test_keep_alive_reuses_both_connections(routed: Setup, upstream: TestUpstream) -> None:
    async with httpx.AsyncClient(base_url=routed.url) as client:
        for _ in range(20):
            assert (await client.get("/")).status_code == 200
    assert upstream.connections == 1


async def test_chunked_and_close_delimited_and_head(routed: Setup) -> None:
    async with httpx.AsyncClient(base_url=routed.url) as client:
        chunked = await client.get("/chunked")
        closing = await client.get("/close")
        head = await client.head("/x")
        after = await client.get("/x")
    assert chunked.json()["server"] == "baseline"
    assert closing.json()["target"] == "/close"
    assert head.status_code == 200
    assert head.content == b""
    assert after.json()["target"] == "/x"


async def test_request_bodies_stream_both_framings(routed: Setup) -> None:
    payload = b"y" * 300_000

    async def gen() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 65536):
            yield payload[i:i + 65536]

    async with httpx.AsyncClient(base_url=routed.url) as client:
        fixed = await client.post("/echo", content=payload)
        chunked = await client.post("/echo", content=gen())
        big = await client.get("/big?kb=2048")
    assert fixed.content == payload
    assert chunked.content == payload
    assert len(big.content) == 2048 * 1024


async def test_refused_upstream_is_502_and_timeout_is_504(routed: Setup) -> None:
    table = RouteTable(version=2, baseline={"pricing": Upstream("127.0.0.1", 1)})
    routed.router.apply(table)
    async with httpx.AsyncClient(base_url=routed.url) as client:
        refused = await client.get("/")
    assert refused.status_code == 502
    assert "baseline service pricing" in refused.json()["message"]


async def test_slow_upstream_is_504(routed: Setup) -> None:
    async with httpx.AsyncClient(base_url=routed.url) as client:
        resp = await client.get("/slow?ms=2500")
    assert resp.status_code == 504
    assert resp.json()["error"] == "upstream_timeout"


async def test_malformed_request_is_400(routed: Setup) -> None:
    out = await _raw(routed.port, b"GARBAGE\x00 / HTTP/1.1\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400")


async def test_oversized_header_section_is_431(routed: Setup) -> None:
    big = b"x-big: " + b"a" * 10_000 + b"\r\n"
    out = await _raw(routed.port, b"GET / HTTP/1.1\r\nhost: x\r\n" + big + b"\r\n")
    assert out.startswith(b"HTTP/1.1 431")
    many = b"".join(b"x-h%d: v\r\n" % i for i in range(300))
    out = await _raw(routed.port, b"GET / HTTP/1.1\r\nhost: x\r\n" + many + b"\r\n")
    assert out.startswith(b"HTTP/1.1 431")


async def test_pipelined_requests_are_answered_in_order(routed: Setup) -> None:
    reqs = b"".join(
        b"GET /p%d HTTP/1.1\r\nhost: x\r\n%b\r\n"
        % (i, b"baggage: laneway-key=" + KEY.encode() + b"\r\n" if i % 2 else b"")
        for i in range(4)
    ) + b"GET /last HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    out = await _raw(routed.port, reqs)
    bodies = [json.loads(part.split(b"\r\n\r\n", 1)[1][:int(part.split(b"content-length: ")[1]
                                                          .split(b"\r\n")[0])])
              for part in out.split(b"HTTP/1.1 200 OK\r\n")[1:]]
    assert [b["target"] for b in bodies] == ["/p0", "/p1", "/p2", "/p3", "/last"]
    assert [b["server"] for b in bodies] == ["baseline", "fork", "baseline", "fork", "baseline"]


async def test_upgrade_is_tunnelled(routed: Setup) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", routed.port)
    writer.write(b"GET /upgrade HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\n"
                 b"upgrade: echo\r\nbaggage: laneway-key=" + KEY.encode() + b"\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101")
    assert b"laneway-served-by: pricing@sb-a" in head
    writer.write(b"hello tunnel")
    assert await asyncio.wait_for(reader.readexactly(12), 5) == b"HELLO TUNNEL"
    writer.close()
    await writer.wait_closed()


async def test_hops_are_recorded_with_trace_and_destination(routed: Setup) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with httpx.AsyncClient(base_url=routed.url) as client:
        await client.get("/a", headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01",
                                        "baggage": f"laneway-key={KEY}"})
        await client.get("/b")
    routed.router.recorder.flush()
    assert [(h.path, h.destination, h.status) for h in routed.hops] == [
        ("/a", "sb-a", 200), ("/b", "baseline", 200)]
    assert routed.hops[0].trace_id == trace
    assert routed.hops[0].parent_id == "00f067aa0ba902b7"
    assert routed.hops[0].routing_key == KEY


async def test_router_keeps_serving_its_table_when_feed_fails(routed: Setup) -> None:
    class DeadFeed:
        async def next_update(self, since: int | None, timeout: float) -> None:
            raise ConnectionError("control plane down")

    routed.router.follow(DeadFeed())
    await asyncio.sleep(0.05)
    async with httpx.AsyncClient(base_url=routed.url) as client:
        resp = await client.get("/", headers={"baggage": f"laneway-key={KEY}"})
    assert resp.json()["server"] == "fork"


async def test_port_in_use_is_a_clear_error(routed: Setup) -> None:
    from laneway.router.server import RouterError

    other = Router(RouterSettings())
    with pytest.raises(RouterError, match=f"port {routed.port} of service 'web'"):
        await other.listen("web", routed.port)
    await other.close()


async def test_a_503_keeps_the_connection_for_the_next_request(routed: Setup) -> None:
    async with httpx.AsyncClient(base_url=routed.url) as client:
        for _ in range(3):
            broken = await client.get("/", headers={"baggage": "laneway-key=brokenkey123"})
            assert broken.status_code == 503
            assert broken.headers.get("connection") != "close"
            assert (await client.get("/")).status_code == 200
        posted = await client.post("/", content=b"x" * 10,
                                   headers={"baggage": "laneway-key=brokenkey123"})
        assert posted.status_code == 503
        assert posted.headers["connection"] == "close"  # its body was not read
        assert (await client.get("/")).status_code == 200
