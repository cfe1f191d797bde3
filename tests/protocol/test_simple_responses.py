"""Responses forwarded as they came (`router.scan`: compiled and in Python): which heads qualify,
and, through a real router, that a response taking that path reaches the client exactly as
one taking the parser's path does (status, fields in order, body, laneway's fields added),
on a connection that stays usable."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import h11
import pytest

from laneway.core.routes import RouteTable, Upstream
from laneway.router import Router, RouterSettings, scan

pytestmark = pytest.mark.usefixtures("scans")  # each test with each scan (conftest)

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello"


@pytest.mark.parametrize(("data", "status"), [
    (OK, 200),
    (b"HTTP/1.1 404 Not Found\r\ncontent-length:0\r\n\r\n", 404),
    (b"HTTP/1.1 503\r\nContent-Length: 2\r\nRetry-After: 1\r\n\r\nno", 503),
    (b"HTTP/1.1 200 OK\r\nX-Empty:\r\nContent-Length: 1\r\n\r\nx", 200),
])
def test_plain_whole_responses_qualify(data: bytes, status: int) -> None:
    end = data.index(b"\r\n\r\n") + 4
    assert scan.simple_response(data, 65536) == (status, end, data[:end])


def test_keep_alive_fields_are_dropped_on_the_way() -> None:
    """What nginx and Node.js send on every response: hop-by-hop, nothing to act on."""
    data = OK.replace(b"X-A: 1\r\n", b"Connection: keep-alive\r\nX-A: 1\r\n"
                      b"Keep-Alive: timeout=5, max=100\r\n")
    found = scan.simple_response(data, 65536)
    assert found is not None
    assert found[2] == OK[:-5]
    for other in (b"Connection: keep-alive, x-a", b"Connection: close",
                  b"Connection: keep-alive\r\nConnection: upgrade"):
        assert scan.simple_response(OK.replace(b"X-A: 1", other), 65536) is None


@pytest.mark.parametrize("data", [
    OK[:-1],  # the body still arriving
    OK + b"HTTP/1.1 200 OK\r\n",  # bytes after the response
    OK.replace(b"Content-Length: 5\r\n", b""),  # no length: close-delimited
    OK.replace(b"Content-Length: 5", b"Content-Length: 5\r\nContent-Length: 5"),  # two
    OK.replace(b"Content-Length: 5", b"Content-Length: +5"),
    OK.replace(b"X-A: 1", b"Connection: close"),  # hop-by-hop: acted on
    OK.replace(b"X-A: 1", b"Transfer-Encoding: chunked"),
    OK.replace(b"X-A: 1", b"Upgrade: h2c"),
    OK.replace(b"X-A: 1", b"TE: trailers"),
    OK.replace(b"X-A: 1", b"Trailer: X-B"),
    OK.replace(b"HTTP/1.1 200", b"HTTP/1.0 200"),  # another version
    OK.replace(b"200 OK", b"204 No Content"),  # no body, whatever the length says
    OK.replace(b"200 OK", b"304 Not Modified"),
    OK.replace(b"200 OK", b"100 Continue"),  # interim
    OK.replace(b"200 OK", b"101 Switching Protocols"),
    OK.replace(b"X-A: 1", b"X-A : 1"),  # space before the colon: llhttp refuses it
    OK.replace(b"X-A: 1", b"X-A: 1\r\n folded"),  # obs-fold
    OK.replace(b"X-A: 1", b"X-A: a\x00b"),  # NUL in a value
    OK.replace(b"X-A: 1\r\n", b"X-A: 1\n"),  # bare LF
    OK.replace(b"X-A: 1", b"X A: 1"),  # not a token
    b"HTTP/1.1 200 OK\r\n" + b"X: 1\r\n" * 101 + b"Content-Length: 0\r\n\r\n",  # many fields
])
def test_anything_else_goes_to_the_parser(data: bytes) -> None:
    assert scan.simple_response(data, 65536) is None


def test_a_head_over_the_bound_goes_to_the_parser() -> None:
    assert scan.simple_response(OK, 40) is None  # the parser answers it with its 502


class RawOrigin:
    """Answers every request on a connection with the next of `answers`, as bytes."""

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = answers
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                for answer in self.answers:
                    await reader.readuntil(b"\r\n\r\n")
                    writer.write(answer)
                    await writer.drain()
                await reader.read()
            writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])


@pytest.fixture
async def through() -> AsyncIterator[tuple[RawOrigin, int]]:
    origin = RawOrigin([])
    origin_port = await origin.start()
    router = Router(RouterSettings())
    port = await router.listen("svc", 0)
    router.apply(RouteTable(version=1, baseline={"svc": Upstream("127.0.0.1", origin_port)}))
    yield origin, port
    await router.close()
    assert origin.server is not None
    origin.server.close()


async def fetch_all(port: int, count: int) -> list[tuple[int, list[tuple[bytes, bytes]], bytes]]:
    """`count` GETs on one keep-alive connection, read with h11 (a strict client)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = h11.Connection(h11.CLIENT)
    out = []
    for _ in range(count):
        writer.write(client.send(h11.Request(method="GET", target="/", headers=[
            ("Host", "svc")])) + client.send(h11.EndOfMessage()))
        status, fields, body = 0, [], b""
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                client.receive_data(await asyncio.wait_for(reader.read(65536), 5))
                continue
            if isinstance(event, h11.Response):
                status, fields = event.status_code, list(event.headers)
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        out.append((status, fields, body))
        client.start_next_cycle()
    writer.close()
    return out


async def test_both_paths_give_the_client_the_same_response(
        through: tuple[RawOrigin, int]) -> None:
    origin, port = through
    simple = OK
    # The same response, but with a field that sends it through the parser.
    parsed = OK.replace(b"X-A: 1\r\n", b"X-A: 1\r\nConnection: x-b\r\nX-B: 2\r\n")
    assert scan.simple_response(simple, 65536) is not None
    assert scan.simple_response(parsed, 65536) is None
    nginx = OK.replace(b"X-A: 1\r\n", b"Connection: keep-alive\r\nX-A: 1\r\n")
    origin.answers = [simple, parsed, nginx, simple]
    first, second, third, fourth = await fetch_all(port, 4)
    assert first == second == third == fourth  # and the connection stayed usable
    status, fields, body = first
    assert (status, body) == (200, b"hello")
    assert fields == [(b"content-type", b"text/plain"), (b"content-length", b"5"),
                      (b"x-a", b"1"), (b"laneway-served-by", b"svc"), (b"via", b"1.1 laneway")]
