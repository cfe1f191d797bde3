"""The preview edge on real sockets: a browser-like client sends `Host: <sandbox>--<service>.
localhost`, the edge puts the sandbox's key in `baggage` and the service's router answers."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator

import httpx
import pytest

from laneway.core.hops import Hop
from laneway.core.routes import ForkRoute, RouteTable, Upstream
from laneway.router import Router, RouterSettings
from tests.upstreams import TestUpstream, collect_hops

KEY = "abc123def456"
GROUP_KEY = "group0000key"


class Edge:
    def __init__(self, router: Router, port: int, hops: list[Hop]) -> None:
        self.router = router
        self.port = port
        self._hops = hops

    @property
    def hops(self) -> list[Hop]:
        self.router.recorder.flush()
        return self._hops

    def client(self, host: str) -> httpx.AsyncClient:
        # httpx sends the URL's host as `Host`; the socket goes to the edge on loopback, as a
        # browser's does for *.localhost.
        return httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}",
                                 headers={"host": f"{host}:{self.port}"})


@pytest.fixture
async def edge(upstream: TestUpstream, fork_upstream: TestUpstream) -> AsyncIterator[Edge]:
    hops: list[Hop] = []
    router = Router(RouterSettings(), hop_sink=collect_hops(hops))
    await router.listen("web", 0)
    port = await router.listen_edge(0)
    table = RouteTable(version=1)
    table.baseline["web"] = Upstream("127.0.0.1", upstream.port)
    table.forks["web"] = {
        KEY: ForkRoute("web", "sb-a", Upstream("127.0.0.1", fork_upstream.port), True,
                       fork="web@sb-a#1"),
        GROUP_KEY: ForkRoute("web", "sb-a", Upstream("127.0.0.1", fork_upstream.port), True,
                             fork="web@sb-a#1"),
    }
    table.names = {"sb-a": KEY, "team": GROUP_KEY, "empty--group": "emptygroupkey"}
    router.apply(table)
    yield Edge(router, port, hops)
    await router.close()


async def test_a_sandbox_host_reaches_its_fork_with_the_key_merged_into_baggage(
        edge: Edge, fork_upstream: TestUpstream) -> None:
    async with edge.client("sb-a--web.localhost") as client:
        resp = await client.get("/page?x=1", headers={
            "baggage": "userid=42, laneway-key=somethingelse", "accept": "text/html"})
    assert resp.status_code == 200
    assert resp.json()["server"] == "fork"
    assert resp.headers.get_list("laneway-served-by") == ["web@sb-a"]
    seen = dict(fork_upstream.requests[-1]["headers"])  # type: ignore[arg-type]
    # The page's own member stays; the key is the host's, whatever the page sent.
    assert seen["baggage"] == f"userid=42,laneway-key={KEY}"
    assert seen["host"] == f"sb-a--web.localhost:{edge.port}"  # the app sees its preview host
    assert fork_upstream.requests[-1]["target"] == "/page?x=1"
    # The hop is the service's, with the key; the edge records none of its own.
    assert [(h.service, h.routing_key, h.destination) for h in edge.hops] == \
        [("web", KEY, "sb-a")]


async def test_a_route_group_host_uses_the_group_key(edge: Edge) -> None:
    async with edge.client("team--web.localhost") as client:
        resp = await client.get("/")
    assert resp.json()["server"] == "fork"
    assert edge.hops[-1].routing_key == GROUP_KEY


async def test_names_with_double_dashes_resolve_to_what_exists(
        edge: Edge, upstream: TestUpstream) -> None:
    async with edge.client("empty--group--web.localhost") as client:
        resp = await client.get("/")
    assert resp.status_code == 200
    assert resp.json()["server"] == "baseline"  # a group no sandbox matches: baseline
    assert edge.hops[-1].routing_key == "emptygroupkey"


async def test_the_service_host_alone_is_the_baseline(edge: Edge) -> None:
    async with edge.client("web.localhost") as client:
        resp = await client.get("/", headers={"baggage": "a=1"})
    assert resp.json()["server"] == "baseline"
    assert edge.hops[-1].routing_key == ""


async def test_an_unknown_or_deleted_sandbox_gets_a_page_not_the_baseline(
        edge: Edge, upstream: TestUpstream) -> None:
    before = len(upstream.requests)
    async with edge.client("gone--web.localhost") as client:
        page = await client.get("/", headers={"accept": "text/html,*/*"})
        api = await client.get("/api/price")
    assert page.status_code == 404
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["laneway-error"] == "unknown_sandbox"
    assert "no sandbox or route group named &#x27;gone&#x27;" in page.text
    assert f"http://sb-a--web.localhost:{edge.port}/" in page.text  # where to go instead
    assert api.status_code == 404
    assert api.json()["error"] == "unknown_sandbox"
    assert len(upstream.requests) == before  # nothing reached a service

    # A sandbox deleted from the table: its host says so from the next request on.
    table = RouteTable(version=2, baseline=dict(edge.router.table.baseline),
                       forks={"web": {}}, names={})
    edge.router.apply(table)
    async with edge.client("sb-a--web.localhost") as client:
        resp = await client.get("/")
    assert resp.status_code == 404
    assert resp.json()["error"] == "unknown_sandbox"


async def test_an_unknown_service_and_the_index(edge: Edge) -> None:
    async with edge.client("sb-a--nope.localhost") as client:
        resp = await client.get("/")
    assert resp.status_code == 404
    assert resp.json()["error"] == "unknown_service"
    assert "web" in resp.json()["message"]
    async with edge.client("localhost") as client:
        index = await client.get("/", headers={"accept": "text/html"})
        plain = await client.get("/")
    assert index.status_code == 200
    assert f"http://sb-a--web.localhost:{edge.port}/" in index.text
    assert f"http://team--web.localhost:{edge.port}/" in index.text
    assert plain.status_code == 404
    assert plain.json()["error"] == "no_preview"


async def test_keep_alive_post_bodies_and_a_body_to_a_missing_sandbox(
        edge: Edge, fork_upstream: TestUpstream) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
    host = f"sb-a--web.localhost:{edge.port}".encode()
    writer.write(b"POST /echo HTTP/1.1\r\nhost: " + host + b"\r\ncontent-length: 5\r\n\r\nhello"
                 b"GET /x HTTP/1.1\r\nhost: " + host + b"\r\n\r\n")
    await writer.drain()
    first = await asyncio.wait_for(reader.readuntil(b"hello"), 5)
    assert first.startswith(b"HTTP/1.1 200")
    second = await asyncio.wait_for(reader.readuntil(b"}"), 5)
    assert b'"server": "fork"' in second
    # A body sent to a host that names nothing: answered, and the connection closed (the
    # body was not read).
    writer.write(b"POST / HTTP/1.1\r\nhost: nobody--web.localhost\r\ncontent-length: 3\r\n\r\n"
                 b"abc")
    rest = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    assert b"404" in rest.split(b"\r\n", 1)[0]
    assert b"connection: close" in rest
    assert json.loads(rest.split(b"\r\n\r\n", 1)[1])["error"] == "unknown_sandbox"


async def test_a_taken_default_port_falls_back_and_an_explicit_one_is_an_error(
        edge: Edge) -> None:
    router = Router(RouterSettings())
    try:
        port = await router.listen_edge(edge.port, fallback=True)
        assert port not in (0, edge.port)
        from laneway.router.server import RouterError
        with pytest.raises(RouterError, match=r"preview\.port"):
            await router.listen_edge(edge.port)
    finally:
        await router.close()


async def test_a_preview_page_calling_a_service_directly_is_the_sandbox_by_its_origin(
        edge: Edge, fork_upstream: TestUpstream) -> None:
    """A page opened at its preview URL that calls another service at its own address (a
    cross-origin `fetch()` to the public port): the browser's `Origin` names the preview."""
    web = edge.router.ports["web"]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{web}") as client:
        by_origin = await client.get("/", headers={
            "origin": f"http://sb-a--web.localhost:{edge.port}"})
        other_port = await client.get("/", headers={
            "origin": f"http://sb-a--web.localhost:{edge.port + 1}"})
        unknown = await client.get("/", headers={
            "origin": f"http://gone--web.localhost:{edge.port}"})
        keyed = await client.get("/", headers={  # a key the request carries wins
            "origin": f"http://sb-a--web.localhost:{edge.port}",
            "baggage": "laneway-key=otherkey0000"})
    assert by_origin.json()["server"] == "fork"
    assert by_origin.headers["laneway-served-by"] == "web@sb-a"
    # ...and the service gets the key in `baggage`, to pass on to its own calls.
    first = next(r for r in fork_upstream.requests
                 if dict(r["headers"]).get("origin"))  # type: ignore[arg-type]
    assert dict(first["headers"])["baggage"] == f"laneway-key={KEY}"  # type: ignore[arg-type]
    assert other_port.json()["server"] == "baseline"
    assert unknown.json()["server"] == "baseline"
    assert keyed.json()["server"] == "baseline"
    assert [h.routing_key for h in edge.hops[-4:]] == [KEY, "", "", "otherkey0000"]


async def test_the_edge_starts_a_trace_for_a_request_without_one(
        edge: Edge, fork_upstream: TestUpstream) -> None:
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    async with edge.client("sb-a--web.localhost") as client:
        await client.get("/")
        started = dict(fork_upstream.requests[-1]["headers"])["traceparent"]  # type: ignore[arg-type]
        await client.get("/", headers={"traceparent": parent})
        kept = dict(fork_upstream.requests[-1]["headers"])["traceparent"]  # type: ignore[arg-type]
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", started)
    assert kept == parent
    assert [h.trace_id for h in edge.hops[-2:]] == [started[3:35], parent[3:35]]
