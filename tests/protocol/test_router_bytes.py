"""The router fed raw bytes from a real socket: framing edge cases a library client would hide."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from laneway.core.routes import RouteTable, Upstream
from laneway.router import Router, RouterSettings
from tests.upstreams import TestUpstream


@pytest.fixture
async def port(upstream: TestUpstream) -> AsyncIterator[int]:
    router = Router(RouterSettings(max_header_bytes=4096))
    bound = await router.listen("svc", 0)
    router.apply(RouteTable(version=1, baseline={"svc": Upstream("127.0.0.1", upstream.port)}))
    yield bound
    await router.close()


async def exchange(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    out = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    return out


async def test_http10_client_gets_a_close_delimited_body(port: int) -> None:
    out = await exchange(port, b"GET /chunked HTTP/1.0\r\nhost: x\r\n\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"transfer-encoding" not in head.lower()
    assert b"connection: close" in head.lower()
    assert body.endswith(b"}")  # the whole JSON document, ended by the close


async def test_chunked_request_with_trailer_is_rechunked(port: int,
                                                        upstream: TestUpstream) -> None:
    out = await exchange(port, b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n"
                               b"trailer: x-sum\r\nconnection: close\r\n\r\n"
                               b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 1\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200")
    assert out.endswith(b"hello world")
    sent = dict(upstream.requests[-1]["headers"])  # type: ignore[arg-type]
    assert "trailer" not in sent
    assert sent["transfer-encoding"] == "chunked"


async def test_content_length_and_chunked_together_is_400(port: int) -> None:
    out = await exchange(port, b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n"
                               b"transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400")


async def test_head_response_has_no_body_and_connection_is_reused(port: int) -> None:
    out = await exchange(port, b"HEAD /x HTTP/1.1\r\nhost: x\r\n\r\n"
                               b"GET /after HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
    first, _, rest = out.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200")
    assert rest.startswith(b"HTTP/1.1 200")  # the GET's answer follows the HEAD's head directly
    assert b'"/after"' in rest
