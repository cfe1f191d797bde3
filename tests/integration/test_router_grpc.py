"""gRPC through the router: real grpcio clients and servers, routed by the key at one hop.

The baseline and a fork are two grpc.aio servers; the router listens on one port for HTTP/1.1 and
HTTP/2 alike. Every call kind, metadata and trailers, deadlines, cancellation both ways, the
routing contract's errors as gRPC statuses, and the hop each call leaves."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import httpx
import pytest
from grpc import aio

from laneway.core.hops import Hop
from laneway.core.routes import ForkRoute, RouteTable, Upstream
from laneway.router import Router, RouterSettings
from tests.grpcapps import EchoServer, keyed, method
from tests.upstreams import TestUpstream, collect_hops

KEY = "abc123def456"
DOWN_KEY = "0fa11ed0fa11"


@dataclass
class Routed:
    router: Router
    port: int
    hops: list[Hop]
    baseline: EchoServer
    fork: EchoServer
    channel: aio.Channel

    async def hops_for(self, count: int) -> list[Hop]:
        for _ in range(200):
            self.router.recorder.flush()
            if len(self.hops) >= count:
                break
            await asyncio.sleep(0.01)
        return self.hops


def _table(baseline: int, fork: int, dead_port: int) -> RouteTable:
    table = RouteTable(version=1, baseline={"pricing": Upstream("127.0.0.1", baseline)})
    table.forks["pricing"] = {
        KEY: ForkRoute("pricing", "sb-a", Upstream("127.0.0.1", fork), True,
                       fork="pricing@sb-a#1"),
        DOWN_KEY: ForkRoute("pricing", "sb-down", None, False,
                            reason="fork pricing@sb-down#1 exited with status 1 (crashed); "
                                   "see `laneway sandbox logs sb-down`",
                            fork="pricing@sb-down#1"),
        "refused1234": ForkRoute("pricing", "sb-gone", Upstream("127.0.0.1", dead_port), True,
                                 fork="pricing@sb-gone#1"),
    }
    return table


def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def routed() -> AsyncIterator[Routed]:
    baseline = await EchoServer("baseline").start()
    fork = await EchoServer("fork").start()
    hops: list[Hop] = []
    router = Router(RouterSettings(), hop_sink=collect_hops(hops))
    port = await router.listen("pricing", 0, protocol="grpc")
    router.apply(_table(baseline.port, fork.port, _free_port()))
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    yield Routed(router, port, hops, baseline, fork, channel)
    await channel.close()
    await router.close()
    await baseline.stop()
    await fork.stop()


async def test_unary_goes_to_the_fork_with_the_key_and_to_the_baseline_without(
        routed: Routed) -> None:
    unary = method(routed.channel, "Unary")
    plain = await unary({"item": "book"})
    forked = await unary({"item": "book"}, metadata=keyed(KEY))
    assert plain["server"] == "baseline"
    assert forked["server"] == "fork"
    assert forked["request"] == {"item": "book"}
    assert forked["metadata"]["baggage"] == f"laneway-key={KEY}"
    hops = await routed.hops_for(2)
    assert [(h.destination, h.status, h.grpc_status, h.path) for h in hops] == [
        ("baseline", 200, 0, "/test.Echo/Unary"), ("sb-a", 200, 0, "/test.Echo/Unary")]
    assert hops[1].routing_key == KEY
    assert hops[1].fork == "pricing@sb-a#1"


async def test_the_key_in_tracestate_routes_too(routed: Routed) -> None:
    answer = await method(routed.channel, "Unary")(
        {}, metadata=(("tracestate", f"laneway={KEY}"),))
    assert answer["server"] == "fork"


async def test_metadata_and_trailers_pass_intact(routed: Routed) -> None:
    call = method(routed.channel, "Unary")(
        {"a": 1}, metadata=(*keyed(KEY), ("x-custom", "v1"), ("x-data-bin", b"\x00\x01\xfe")))
    await call
    initial = dict(await call.initial_metadata())
    trailing = dict(await call.trailing_metadata())
    assert initial["x-initial"] == "hello"
    assert initial["laneway-served-by"] == "pricing@sb-a"
    assert trailing["x-trailer"] == "bye"
    assert trailing["x-blob-bin"] == b"\x00\xffbin"
    assert await call.code() == grpc.StatusCode.OK
    received = (await call)["metadata"]
    assert received["x-custom"] == "v1"
    assert received["x-data-bin"] == "0001fe"


async def test_an_error_status_message_and_its_trailing_metadata_pass(routed: Routed) -> None:
    call = method(routed.channel, "Fail")({}, metadata=keyed(KEY))
    with pytest.raises(aio.AioRpcError) as err:
        await call
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.details() == "no stock: ünïcode ok"
    trailing = dict(err.value.trailing_metadata() or ())
    assert trailing["x-reason-bin"] == b"\x01\x02"
    assert trailing["x-why"] == "because"
    hops = await routed.hops_for(1)
    assert hops[-1].grpc_status == 9


async def test_server_streaming_client_streaming_and_bidi(routed: Routed) -> None:
    stream = method(routed.channel, "ServerStream", "unary_stream")
    got = [m async for m in stream({"count": 50, "size": 2000}, metadata=keyed(KEY))]
    assert [m["i"] for m in got] == list(range(50))
    assert {m["server"] for m in got} == {"fork"}

    async def numbers() -> AsyncIterator[dict[str, int]]:
        for n in range(1, 101):
            yield {"n": n}

    total = await method(routed.channel, "ClientStream", "stream_unary")(
        numbers(), metadata=keyed(KEY))
    assert total == {"server": "fork", "count": 100, "total": 5050}

    bidi = method(routed.channel, "Bidi", "stream_stream")(metadata=keyed(KEY))
    for i in range(20):
        await bidi.write({"i": i})
        answer = await bidi.read()
        assert answer == {"server": "fork", "echo": {"i": i}}
    await bidi.done_writing()
    assert await bidi.read() == aio.EOF
    assert await bidi.code() == grpc.StatusCode.OK


async def test_a_large_stream_passes_within_flow_control(routed: Routed) -> None:
    # 40 MB through windows of 256 KiB: the router must pass data on as windows open.
    stream = method(routed.channel, "ServerStream", "unary_stream")
    count = 0
    async for message in stream({"count": 400, "size": 100_000}):
        count += len(message["pad"])
    assert count == 400 * 100_000


async def test_a_crashed_fork_is_unavailable_with_the_reason(routed: Routed) -> None:
    with pytest.raises(aio.AioRpcError) as err:
        await method(routed.channel, "Unary")({}, metadata=keyed(DOWN_KEY))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    details = err.value.details() or ""
    assert "pricing@sb-down#1" in details
    assert "crashed" in details
    trailing = dict(err.value.trailing_metadata() or ())
    assert trailing["laneway-error"] == "fork_not_ready"
    assert trailing["laneway-sandbox"] == "sb-down"
    assert routed.baseline.calls == 0  # never a silent baseline answer
    hops = await routed.hops_for(1)
    assert (hops[-1].destination, hops[-1].grpc_status) == ("sb-down", 14)
    assert "crashed" in hops[-1].error


async def test_a_refused_upstream_is_unavailable(routed: Routed) -> None:
    with pytest.raises(aio.AioRpcError) as err:
        await method(routed.channel, "Unary")({}, metadata=keyed("refused1234"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    details = err.value.details() or ""
    assert details.startswith("fork pricing@sb-gone at 127.0.0.1:")
    assert "refused" in details


async def test_the_deadline_is_forwarded_reduced_and_enforced(routed: Routed) -> None:
    await method(routed.channel, "Unary")({}, timeout=5.0)
    remaining = routed.baseline.seen_timeouts[-1]
    assert remaining is not None
    # grpcio rounds the grpc-timeout it sends up to a few significant digits (5 s may leave as
    # 5.01 s); the router's reduction itself is pinned by the raw-upstream test below.
    assert 3.0 < remaining <= 5.05
    started = time.monotonic()
    with pytest.raises(aio.AioRpcError) as err:
        await method(routed.channel, "Slow")({"sleep": 5}, timeout=0.3, metadata=keyed(KEY))
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 3
    hops = await routed.hops_for(2)
    assert hops[-1].grpc_status == 4


async def test_the_router_ends_a_call_past_its_deadline_with_deadline_exceeded(
        routed: Routed) -> None:
    # A raw h2 client that does not enforce the deadline itself: the router must.
    reader, writer = await asyncio.open_connection("127.0.0.1", routed.port)
    import h2.config
    import h2.connection
    import h2.events
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                header_encoding=None))
    conn.initiate_connection()
    conn.send_headers(1, [(b":method", b"POST"), (b":scheme", b"http"),
                          (b":path", b"/test.Echo/Slow"), (b":authority", b"pricing"),
                          (b"content-type", b"application/grpc"), (b"te", b"trailers"),
                          (b"grpc-timeout", b"200m")])
    body = json.dumps({"sleep": 5}).encode()
    conn.send_data(1, b"\x00" + len(body).to_bytes(4, "big") + body, end_stream=True)
    writer.write(conn.data_to_send())
    started = time.monotonic()
    headers: dict[bytes, bytes] = {}
    while time.monotonic() - started < 3:
        data = await asyncio.wait_for(reader.read(65536), 3)
        assert data
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                headers.update(dict(event.headers))
            if isinstance(event, h2.events.StreamEnded):
                break
        else:
            writer.write(conn.data_to_send())
            continue
        break
    writer.close()
    assert headers[b"grpc-status"] == b"4"
    assert b"deadline" in headers[b"grpc-message"]
    assert 0.15 < time.monotonic() - started < 2.5
    await asyncio.wait_for(routed.baseline.cancelled.wait(), 2)  # the upstream call ended


async def test_client_cancellation_reaches_the_upstream(routed: Routed) -> None:
    call = method(routed.channel, "Slow")({"sleep": 10}, metadata=keyed(KEY))
    await asyncio.sleep(0.3)
    call.cancel()
    await asyncio.wait_for(routed.fork.cancelled.wait(), 3)
    hops = await routed.hops_for(1)
    assert hops[-1].grpc_status == 1  # CANCELLED


async def test_an_upstream_that_dies_mid_stream_ends_the_call_unavailable(
        routed: Routed) -> None:
    stream = method(routed.channel, "ServerStream", "unary_stream")(
        {"count": 1000, "pause": 0.05}, metadata=keyed(KEY))
    first = await stream.read()
    assert first["i"] == 0
    await routed.fork.stop()

    async def drain() -> None:
        while await stream.read() != aio.EOF:
            pass

    with pytest.raises(aio.AioRpcError) as err:
        await drain()
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


async def test_many_concurrent_calls_share_few_upstream_connections(routed: Routed) -> None:
    unary = method(routed.channel, "Unary")
    answers = await asyncio.gather(*[unary({"i": i}) for i in range(300)])
    assert sorted(a["request"]["i"] for a in answers) == list(range(300))
    conns = routed.router.h2pool._conns[Upstream("127.0.0.1", routed.baseline.port)]
    assert 1 <= len(conns) <= 3


async def test_plain_http2_to_an_http1_service_and_http1_on_the_same_port(
        upstream: TestUpstream) -> None:
    router = Router(RouterSettings())
    port = await router.listen("web", 0)
    router.apply(RouteTable(version=1, baseline={"web": Upstream("127.0.0.1", upstream.port)}))
    try:
        async with httpx.AsyncClient(http2=False) as h1:
            answer = await h1.get(f"http://127.0.0.1:{port}/hello")
        assert answer.status_code == 200
        proc = await asyncio.create_subprocess_exec(
            "curl", "-sS", "--http2-prior-knowledge", "-i", "-d", "x" * 100_000,
            f"http://127.0.0.1:{port}/post?q=1", stdout=asyncio.subprocess.PIPE)
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
        text = out.decode("latin-1")
        assert text.startswith("HTTP/2 200"), text[:300]
        assert "laneway-served-by: web" in text
    finally:
        await router.close()


async def test_curl_http2_upgrade_with_a_body_is_answered_in_http1(
        upstream: TestUpstream) -> None:
    # `curl --http2` offers `Upgrade: h2c`; with a body the router declines and answers in
    # HTTP/1.1, without hanging.
    router = Router(RouterSettings())
    port = await router.listen("web", 0)
    router.apply(RouteTable(version=1, baseline={"web": Upstream("127.0.0.1", upstream.port)}))
    try:
        for args in (["-d", "a=1&b=2"], []):
            proc = await asyncio.create_subprocess_exec(
                "curl", "-sS", "--http2", "-i", "--max-time", "5", *args,
                f"http://127.0.0.1:{port}/echo", stdout=asyncio.subprocess.PIPE)
            out, _ = await asyncio.wait_for(proc.communicate(), 8)
            text = out.decode("latin-1")
            assert proc.returncode == 0, text
            assert text.startswith("HTTP/1.1 200"), text[:300]
    finally:
        await router.close()


async def test_http1_to_an_http2_only_service_is_a_clear_505(routed: Routed) -> None:
    async with httpx.AsyncClient() as client:
        answer = await client.post(f"http://127.0.0.1:{routed.port}/test.Echo/Unary",
                                   content=b"{}")
    assert answer.status_code == 505
    assert answer.json()["error"] == "http2_only"
    assert "protocol: grpc" in answer.json()["message"]
    assert routed.baseline.calls == 0


async def test_grpc_timeout_is_forwarded_reduced_by_the_time_in_the_router() -> None:
    """A raw HTTP/2 upstream records the grpc-timeout it receives: the router rewrites the
    client's `2S` to what is left (microseconds), never passes it on unchanged."""
    import h2.config
    import h2.connection
    import h2.events

    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        while data := await reader.read(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    seen.extend(v for k, v in event.headers if k == b"grpc-timeout")
                    conn.send_headers(event.stream_id, [
                        (b":status", b"200"), (b"content-type", b"application/grpc"),
                        (b"grpc-status", b"0")], end_stream=True)
            writer.write(conn.data_to_send())
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    router = Router(RouterSettings())
    port = await router.listen("svc", 0, protocol="grpc")
    router.apply(RouteTable(version=1, baseline={
        "svc": Upstream("127.0.0.1", server.sockets[0].getsockname()[1])}))
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            raw = channel.unary_unary("/x.Y/Z")
            await raw(b"", timeout=2.0)
        (value,) = seen
        assert value.endswith(b"u")
        assert 1.5 < int(value[:-1]) / 1e6 < 2.0
    finally:
        await router.close()
        server.close()


def test_grpc_timeout_values() -> None:
    from laneway.core.grpc import format_grpc_timeout, parse_grpc_timeout
    assert parse_grpc_timeout(b"100m") == pytest.approx(0.1)
    assert parse_grpc_timeout(b"2S") == 2.0
    assert parse_grpc_timeout(b"1H") == 3600.0
    assert parse_grpc_timeout(b"123456789S") is None  # more than 8 digits
    assert parse_grpc_timeout(b"5s") is None  # units are case-sensitive
    assert format_grpc_timeout(1.5) == b"1500000u"
    assert format_grpc_timeout(500.0) == b"500000m"
    assert format_grpc_timeout(10 ** 9) == b"16666666M"
    assert format_grpc_timeout(-1) == b"0u"


async def test_quiet_grpc_streams_outlive_the_http1_idle_timeouts() -> None:
    """Every HTTP/1.1 inactivity timeout at 0.3 s; a server stream that is quiet for 1 s between
    messages, and a bidi stream idle as long, still complete (only a deadline ends a gRPC
    stream), while a unary call without a deadline whose answer never starts is ended."""
    server = await EchoServer("baseline").start()
    router = Router(RouterSettings(upstream_timeout=0.3, client_timeout=0.3,
                                   keepalive_timeout=0.3, request_head_timeout=0.3))
    port = await router.listen("svc", 0, protocol="grpc")
    router.apply(RouteTable(version=1, baseline={"svc": Upstream("127.0.0.1", server.port)}))
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stream = method(channel, "ServerStream", "unary_stream")
            got = [m["i"] async for m in stream({"count": 3, "pause": 1.0})]
            assert got == [0, 1, 2]
            bidi = method(channel, "Bidi", "stream_stream")()
            await bidi.write({"a": 1})
            assert (await bidi.read())["echo"] == {"a": 1}
            await asyncio.sleep(1.0)
            await bidi.write({"a": 2})
            assert (await bidi.read())["echo"] == {"a": 2}
            await bidi.done_writing()
            assert await bidi.code() == grpc.StatusCode.OK
            with pytest.raises(aio.AioRpcError) as err:
                await method(channel, "Slow")({"sleep": 3})
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "router.upstream_timeout" in (err.value.details() or "")
    finally:
        await router.close()
        await server.stop()


async def test_a_grpc_service_that_speaks_http1_is_named_as_such(upstream: TestUpstream) -> None:
    router = Router(RouterSettings())
    port = await router.listen("svc", 0, protocol="grpc")
    router.apply(RouteTable(version=1, baseline={"svc": Upstream("127.0.0.1", upstream.port)}))
    try:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(aio.AioRpcError) as err:
                await method(channel, "Unary")({})
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        details = err.value.details() or ""
        assert "baseline service svc answered in HTTP/1.1, not HTTP/2" in details
        assert "protocol: http" in details
    finally:
        await router.close()


async def test_a_plain_http2_request_a_grpc_server_resets_gets_an_answer(
        routed: Routed) -> None:
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--http2-prior-knowledge", "-i", f"http://127.0.0.1:{routed.port}/",
        stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), 10)
    text = out.decode("latin-1")
    assert text.startswith("HTTP/2 502"), text[:300]
    body = json.loads(text.split("\r\n\r\n", 1)[1])
    assert body["error"] == "upstream_reset"
    assert "not gRPC calls" in body["message"]
