"""Property: whatever request streams clients send (well-formed and malformed requests, pipelined,
split at arbitrary byte boundaries, bodies by Content-Length and chunked), several at once on one
shared upstream:

- the upstream receives only complete, well-framed requests that a client sent, each client's in
  the order it sent them, and only from the valid prefix of its stream (the requests before its
  first malformed one): per client, a prefix of that valid prefix;
- every response reaches the client that asked for it: each client's answers carry its own
  request ids, in order, a prefix of its valid prefix; a stream with a malformed request ends
  with at most one 4xx/5xx and the connection closed; a stream without one gets every answer.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.protocol.corpus.harness import Case, laneway
from tests.protocol.corpus.rawupstream import (
    FramingError,
    ParsedResponse,
    RawUpstream,
    parse_response,
    split_requests,
)

# Heads every conforming proxy refuses with a 4xx/5xx and a close; `{id}` marks the request id.
MALFORMED = (
    b"POST /bad HTTP/1.1\r\nhost: x\r\nx-req-id: {id}\r\ncontent-length: 3\r\n"
    b"transfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"POST /bad HTTP/1.1\r\nhost: x\r\nx-req-id: {id}\r\ncontent-length: 3\r\n"
    b"content-length: 4\r\n\r\nabcd",
    b"GET /bad HTTP/1.1\nhost: x\nx-req-id: {id}\n\n",
    b"GET /bad HTTP/1.1\r\nhost: x\r\nx-req-id: {id}\r\nx-a: 1\r\n 2\r\n\r\n",
    b"GET /bad HTTP/1.1\r\nhost: x\r\nx-req-id: {id}\r\nx-a: 1\x002\r\n\r\n",
    b"GET /bad HTTP/1.1\r\nhost: x\r\nx-req-id: {id}\r\nx-a : 1\r\n\r\n",
    b"POST /bad HTTP/1.1\r\nhost: x\r\nx-req-id: {id}\r\ntransfer-encoding: gzip, chunked"
    b"\r\n\r\n0\r\n\r\n",
    b"POST /bad HTTP/1.1\r\nhost: x\r\nx-req-id: {id}\r\ntransfer-encoding: chunked\r\n\r\n"
    b"zz\r\nabc\r\n0\r\n\r\n",
    b"POST /bad HTTP/1.1\r\nhost: x\r\nx-req-id: {id}\r\ncontent-length: +3\r\n\r\nabc",
)


@dataclass(frozen=True)
class Req:
    rid: bytes
    method: bytes
    target: bytes
    body: bytes
    wire: bytes
    valid: bool


@st.composite
def requests(draw: st.DrawFn, rid: bytes) -> Req:
    kind = draw(st.sampled_from(["get", "length", "chunked", "malformed"]))
    target = b"/r/" + rid
    head = b"host: x\r\nx-req-id: " + rid + b"\r\n"
    if kind == "get":
        return Req(rid, b"GET", target, b"", b"GET " + target + b" HTTP/1.1\r\n" + head + b"\r\n",
                   True)
    if kind == "malformed":
        template = draw(st.sampled_from(MALFORMED))
        return Req(rid, b"", b"", b"", template.replace(b"{id}", rid), False)
    body = draw(st.binary(min_size=0 if kind == "length" else 1, max_size=300))
    if kind == "length":
        wire = (b"POST " + target + b" HTTP/1.1\r\n" + head + b"content-length: %d\r\n\r\n"
                % len(body) + body)
        return Req(rid, b"POST", target, body, wire, True)
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(body) - 1)), max_size=4)))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    ext = draw(st.sampled_from([b"", b";x=1"]))
    chunks = b"".join(b"%x%b\r\n%b\r\n" % (len(p), ext, p) for p in pieces if p)
    wire = (b"POST " + target + b" HTTP/1.1\r\n" + head + b"transfer-encoding: chunked\r\n\r\n"
            + chunks + b"0\r\n\r\n")
    return Req(rid, b"POST", target, body, wire, True)


@st.composite
def streams(draw: st.DrawFn) -> list[tuple[list[Req], list[bytes]]]:
    """Per client: its requests and the stream cut into the pieces it is written in."""
    out = []
    for c in range(draw(st.integers(1, 3))):
        reqs = [draw(requests(b"c%d-%d" % (c, i))) for i in range(draw(st.integers(1, 5)))]
        wire = b"".join(r.wire for r in reqs)
        cuts = sorted(draw(st.sets(st.integers(1, len(wire) - 1), max_size=8)))
        pieces = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
        out.append((reqs, pieces))
    return out


def _valid_prefix(reqs: list[Req]) -> tuple[list[Req], bool]:
    for i, r in enumerate(reqs):
        if not r.valid:
            return reqs[:i], True
    return reqs, False


async def _client(port: int, reqs: list[Req], pieces: list[bytes]) -> tuple[
        list[ParsedResponse], bool, str]:
    valid, has_bad = _valid_prefix(reqs)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    buf = b""
    got: list[ParsedResponse] = []
    eof = False
    note = ""

    async def send() -> None:
        for piece in pieces:
            if writer.is_closing():
                return
            writer.write(piece)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            await asyncio.sleep(0.001)

    sender = asyncio.create_task(send())
    try:
        async with asyncio.timeout(5):
            while True:
                while buf:
                    try:
                        parsed = parse_response(buf, eof=eof)
                    except FramingError as exc:
                        note = f"ill-framed response: {exc}"
                        buf = b""
                        break
                    if parsed is None:
                        break
                    resp, used = parsed
                    buf = buf[used:]
                    got.append(resp)
                if eof or (not has_bad and len(got) >= len(valid)):
                    break
                try:
                    data = await reader.read(65536)
                except ConnectionError:
                    data = b""
                if not data:
                    eof = True
                buf += data
    except TimeoutError:
        note = (f"stuck: {len(got)} responses, eof={eof}, want "
                f"{'a close' if has_bad else f'{len(valid)} responses'}")
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return got, eof, note


async def _play(clients: list[tuple[list[Req], list[bytes]]]) -> list[str]:
    upstream = RawUpstream()
    await upstream.start()
    problems: list[str] = []
    try:
        async with laneway.open(Case("property", "", (), ()), upstream.port, upstream.port) as port:
            results = await asyncio.gather(*(_client(port, reqs, pieces)
                                             for reqs, pieces in clients))
            await asyncio.sleep(0.02)
    finally:
        await upstream.stop()
    sent = {r.rid: r for reqs, _ in clients for r in reqs}
    # what the upstream got
    per_client: dict[bytes, list[bytes]] = {}
    for conn in upstream.conns:
        received, rest, error = split_requests(bytes(conn.received))
        if error:
            problems.append(f"upstream connection {conn.index} got ill-framed bytes ({error}): "
                            f"{rest[:120]!r}")
        elif rest and not conn.eof:
            problems.append(f"upstream connection {conn.index} holds a partial request and was "
                            f"left open: {rest[:120]!r}")
        for req in received:
            rid = req.get(b"x-req-id") or b""
            if upstream.arrivals.count(req) == 0:
                problems.append(f"upstream connection {conn.index}: {rid!r} was not read")
            want = sent.get(rid)
            if want is None or not want.valid:
                problems.append(f"upstream got a request the clients did not send validly: "
                                f"{req.line!r} {rid!r}")
                continue
            if (req.method, req.target, req.body) != (want.method, want.target, want.body):
                problems.append(f"upstream got {rid!r} altered: {req.line!r} body "
                                f"{req.body[:60]!r}, sent {want.body[:60]!r}")
    # Arrival order across connections: a client's next request goes upstream only after the
    # answer to its previous one, so the order the upstream read them in is the order sent.
    for req in upstream.arrivals:
        rid = req.get(b"x-req-id") or b""
        per_client.setdefault(rid.split(b"-")[0], []).append(rid)
    for (reqs, pieces), (got, eof, note) in zip(clients, results, strict=True):
        valid, has_bad = _valid_prefix(reqs)
        ids = [r.rid for r in valid]
        name = reqs[0].rid.split(b"-")[0]
        label = f"client {name.decode()} ({len(pieces)} pieces)"
        if note:
            problems.append(f"{label}: {note}")
        forwarded = per_client.get(name, [])
        if forwarded != ids[:len(forwarded)]:
            problems.append(f"{label}: upstream order {forwarded}, valid prefix {ids}")
        answered = [r.get(b"x-req-id") for r in got if r.status == 200]
        if answered != ids[:len(answered)]:
            problems.append(f"{label}: answers {answered}, valid prefix {ids}")
        for resp in got:
            if resp.status == 200 and resp.body != b"/r/" + (resp.get(b"x-req-id") or b""):
                problems.append(f"{label}: answer for {resp.get(b'x-req-id')!r} carries "
                                f"{resp.body[:60]!r}")
        errors = [r.status for r in got if r.status != 200]
        if not has_bad:
            if answered != ids:
                problems.append(f"{label}: all-valid stream, answers {answered}, want {ids}")
            if errors:
                problems.append(f"{label}: all-valid stream got errors {errors}")
        else:
            if len(errors) > 1 or (errors and got[-1].status == 200) or \
                    any(not 400 <= s < 600 for s in errors):
                problems.append(f"{label}: after the valid prefix, statuses "
                                f"{[r.status for r in got]}")
            if not eof:
                problems.append(f"{label}: connection not closed after a malformed request")
    return problems


@settings(max_examples=150, deadline=None, derandomize=False,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(streams())
async def test_request_streams_reach_only_their_client(
        clients: list[tuple[list[Req], list[bytes]]]) -> None:
    problems = await _play(clients)
    assert not problems, "\n".join(problems)
