"""Requests forwarded as they came (`ClientConnection._plain_request`), through a real router:
a request that takes that path reaches the upstream as the same request taking the parser's
path does (method, target, fields in order, body, `via` added, hop-by-hop fields dropped),
routed alike, recorded alike, on a connection that stays usable; and a request the fast path
must not take (bad framing, several Hosts, extension methods, pipelining) is still answered
by the parser's rules.

The parser's path is forced by sending the same bytes in two writes, split inside the head
(the fast path only takes a whole request read at once); `TCP_NODELAY` and a pause between
the writes keep them two reads."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import h11
import pytest

from laneway.core.hops import Hop
from laneway.core.routes import ForkRoute, RouteTable, Upstream
from laneway.router import Router, RouterSettings
from tests.upstreams import collect_hops

pytestmark = pytest.mark.usefixtures("scans")  # each test with each scan (conftest)

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
KEY = "plain0000001"


class Origin:
    """Reads each request with h11 (a strict server) and answers `ANSWER`; keeps what came."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[tuple[bytes, bytes, list[tuple[bytes, bytes]], bytes]] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conn = h11.Connection(h11.SERVER)
            request: h11.Request | None = None
            body = b""
            with contextlib.suppress(ConnectionError):
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await reader.read(65536)
                        if not data:
                            break
                        conn.receive_data(data)
                        continue
                    if isinstance(event, h11.Request):
                        request, body = event, b""
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        assert request is not None
                        self.seen.append((request.method, request.target,
                                          list(request.headers), body))
                        writer.write(ANSWER)
                        await writer.drain()
                        conn.send(h11.Response(status_code=200, headers=[
                            ("content-length", "2")]))
                        conn.send(h11.Data(data=b"ok"))
                        conn.send(h11.EndOfMessage())
                        conn.start_next_cycle()
            writer.close()

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])


@pytest.fixture
async def router() -> AsyncIterator[tuple[int, Origin, Origin, list[Hop]]]:
    base, fork = Origin("base"), Origin("fork")
    base_port, fork_port = await base.start(), await fork.start()
    hops: list[Hop] = []
    router = Router(RouterSettings(), hop_sink=collect_hops(hops))
    port = await router.listen("svc", 0)
    table = RouteTable(version=1, baseline={"svc": Upstream("127.0.0.1", base_port)})
    table.forks["svc"] = {KEY: ForkRoute("svc", "sb", Upstream("127.0.0.1", fork_port), True,
                                         fork="svc@sb#1")}
    router.apply(table)
    yield port, base, fork, hops
    await router.close()
    for origin in (base, fork):
        assert origin.server is not None
        origin.server.close()


async def exchange(port: int, requests: list[tuple[bytes, bool]]) -> list[bytes]:
    """Send each request on one connection (whole, or in two writes when the flag says so)
    and read each answer; what the router answered, in order."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    answers = []
    for raw, split in requests:
        if split:
            at = raw.index(b"\r\n") + 3  # inside the head: the parser's path
            writer.write(raw[:at])
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(raw[at:])
        else:
            writer.write(raw)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        answers.append(head + await reader.readexactly(length))
    writer.close()
    return answers


REQUESTS = [
    b"GET /a?b=1 HTTP/1.1\r\nHost: svc\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: svc:8080\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n",
    b"GET / HTTP/1.1\r\nhost: svc\r\nbaggage: a=1, laneway-key=" + KEY.encode() + b";p=1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: svc\r\nBaggage: a=1\r\nBAGGAGE: laneway-key=" + KEY.encode()
    + b"\r\n\r\n",  # two fields are one list: the last member decides
    b"GET / HTTP/1.1\r\nHost: svc\r\ntracestate: laneway=" + KEY.encode() + b"\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: svc\r\nbaggage: a=1\r\ntracestate: laneway=" + KEY.encode()
    + b"\r\n\r\n",  # baggage without the key: tracestate's decides
    b"GET / HTTP/1.1\r\nHost: svc\r\nbaggage: sentry-trace=1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: svc\r\ntraceparent: "
    b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: svc\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n"
    b"X-A: 1\r\n\r\n",  # hop-by-hop, dropped
    b"POST /p HTTP/1.1\r\nHost: svc\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n"
    b"hello",
    b"PUT /p HTTP/1.1\r\nHost: svc\r\nContent-Length: 0\r\n\r\n",
    b"DELETE /p HTTP/1.1\r\nHost: svc\r\nX-Empty:\r\nX-Spaces:   v  \r\n\r\n",
    b"OPTIONS /p HTTP/1.1\r\nHost: svc\r\nX-Obs: caf\xc3\xa9\r\n\r\n",
]


@pytest.mark.parametrize("raw", REQUESTS)
async def test_both_paths_forward_the_same_request(
        router: tuple[int, Origin, Origin, list[Hop]], raw: bytes) -> None:
    port, base, fork, hops = router
    answers = await exchange(port, [(raw, False), (raw, True), (raw, False)])
    assert answers[0] == answers[1] == answers[2]  # and the connection stayed usable
    assert answers[0].startswith(b"HTTP/1.1 200 OK\r\n")
    seen = base.seen + fork.seen
    assert len(seen) == 3
    assert seen[0] == seen[1] == seen[2], seen
    method, _, fields, body = seen[0]
    names = [name for name, _ in fields]
    assert names[-1] == b"via"
    assert b"connection" not in names
    assert b"keep-alive" not in names
    if method == b"POST":
        assert body == b"hello"
    await asyncio.sleep(0.1)  # the hop batch's timer
    assert len(hops) == 3
    assert hops[0].destination == hops[1].destination == hops[2].destination
    assert (hops[0].trace_id, hops[0].routing_key, hops[0].method, hops[0].path) == (
        hops[1].trace_id, hops[1].routing_key, hops[1].method, hops[1].path)
    keyed = KEY.encode() in raw
    assert hops[0].destination == ("sb" if keyed else "baseline")
    assert len(fork.seen) == (3 if keyed else 0)


@pytest.mark.parametrize(("raw", "status"), [
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n", 400),  # HTTP/1.1 without Host
    (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX-A : 1\r\n\r\n", 400),
])
async def test_what_the_fast_path_leaves_is_refused_by_the_parser_rules(
        router: tuple[int, Origin, Origin, list[Hop]], raw: bytes, status: int) -> None:
    port, base, fork, _ = router
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    assert head.startswith(b"HTTP/1.1 %d " % status), head
    assert base.seen == fork.seen == []


async def test_pipelined_and_extension_method_requests_keep_their_order_and_method(
        router: tuple[int, Origin, Origin, list[Hop]]) -> None:
    port, base, _, _ = router
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPURGE /2 HTTP/1.1\r\nHost: a\r\n\r\n")
    for _ in range(2):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        await reader.readexactly(2)
    writer.write(b"PURGE /3 HTTP/1.1\r\nHost: a\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    writer.close()
    assert [(m, t) for m, t, _, _ in base.seen] == [(b"GET", b"/1"), (b"PURGE", b"/2"),
                                                    (b"PURGE", b"/3")]
