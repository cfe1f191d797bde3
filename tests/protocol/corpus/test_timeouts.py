"""Timeouts (issue 11, item 10), with settings of 0.5 s and margins of seconds: the assertions
are about what happens (a 408, a 504, a close, or nothing cut), never how fast.

request_head_timeout counts total time from the head's first byte (a slowloris dripping one byte
per 100 ms is cut too); keepalive_timeout closes an idle connection silently; upstream_timeout
and client_timeout are inactivity: steady progress in either direction is never cut.
"""

from __future__ import annotations

import pytest

from tests.protocol.corpus.conftest import Conform
from tests.protocol.corpus.harness import (
    Case,
    Client,
    Connect,
    Drip,
    Pause,
    Read,
    ReadRaw,
    Resp,
    U,
    Write,
    simple,
)
from tests.protocol.corpus.rawupstream import (
    DEFAULT_SCRIPT,
    Echo,
    Hold,
    Recv,
    Respond,
    Send,
    SendSlowly,
    Sleep,
)

T = 0.5
HEAD_T = (("request_head_timeout", T),)
TIMEOUT = r"time|within|slow|too long"
GET_A = b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n"
GET_B = b"GET /b HTTP/1.1\r\nhost: x\r\n\r\n"
WS = (b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n"
      b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n")
SWITCH = (b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
          b"sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
BODY = b"0123456789abcdefghij"  # dripped a byte per 100 ms: 2 s against 0.5 s timeouts

CASES: tuple[Case, ...] = (
    simple("head_incomplete",
           "a request head not complete within request_head_timeout: 408, then close",
           b"GET /a HTTP/1.1\r\nhost: x\r\n", (Resp(408, error=TIMEOUT),), (), closed=True,
           settings=HEAD_T),
    Case("slowloris_head",
         "a head dripped one byte per 100 ms is cut too: the timeout is total, not inactivity",
         (Client((Drip(b"GET /a HTTP/1.1\r\nhost: x\r\nx-pad: " + b"p" * 40 + b"\r\n\r\n"),),
                 (Resp(408, error=TIMEOUT),), closed=True),),
         (), settings=HEAD_T),
    Case("second_head_slow",
         "the head timeout applies to each request of a keep-alive connection",
         (Client((Write(GET_A), Read(), Drip(b"GET /b HTTP/1.1\r\nhost: x\r\nx-pad: "
                                            + b"p" * 40 + b"\r\n\r\n")),
                 (Resp(200, body=b"/a"), Resp(408, error=TIMEOUT)), closed=True),),
         (U(b"GET /a HTTP/1.1", b"host: x"),), settings=(*HEAD_T, ("keepalive_timeout", 5))),
    Case("idle_keep_alive_closed",
         "an idle keep-alive connection is closed after keepalive_timeout, without a response",
         (Client((Write(GET_A), Read()), (Resp(200, body=b"/a"),), closed=True),),
         (U(b"GET /a HTTP/1.1", b"host: x"),), settings=(("keepalive_timeout", T),)),
    Case("fresh_connection_idle",
         "a connection that never sends a byte is closed (silently, or with a 408)",
         (Client((Connect(),), None, closed=True),), (),
         settings=(("keepalive_timeout", T), ("request_head_timeout", T))),
    Case("keep_alive_not_applied_mid_request",
         "keepalive_timeout only counts while no request is in progress: a slow answer is not "
         "cut, and the idle time starts after it (the next request, sent at once, is served)",
         (Client((Write(GET_A), Read(), Write(GET_B), Read()),
                 (Resp(200, body=b"/a"), Resp(200, body=b"/b")), closed=None),),
         (U(b"GET /a HTTP/1.1", b"host: x"), U(b"GET /b HTTP/1.1", b"host: x")),
         script=(Recv(), Sleep(1.5), Respond(), *DEFAULT_SCRIPT),
         settings=(("keepalive_timeout", T), ("upstream_timeout", 5))),
    Case("idle_time_starts_after_response",
         "the keep-alive idle time starts when the response is complete: a request sent well "
         "within keepalive_timeout after a slow answer is served",
         (Client((Write(GET_A), Read(), Pause(0.3), Write(GET_B), Read()),
                 (Resp(200, body=b"/a"), Resp(200, body=b"/b")), closed=None),),
         (U(b"GET /a HTTP/1.1", b"host: x"), U(b"GET /b HTTP/1.1", b"host: x")),
         scripts=((Recv(), Sleep(2.0), Respond(), *DEFAULT_SCRIPT),),
         settings=(("keepalive_timeout", 1.0), ("upstream_timeout", 5))),
    Case("slow_steady_upload",
         "an upload slower than upstream_timeout in total, but with steady progress, is not cut",
         (Client((Write(b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n"
                        % len(BODY)), Drip(BODY), Read()),
                 (Resp(200, body=b"/a"),)),),
         (U(b"POST /a HTTP/1.1", b"host: x", b"content-length: %d" % len(BODY), body=BODY),),
         settings=(("upstream_timeout", T), ("client_timeout", T))),
    Case("slow_steady_chunked_upload", "the same with a chunked body",
         (Client((Write(b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"),
                  Drip(b"".join(b"1\r\n%c\r\n" % c for c in BODY) + b"0\r\n\r\n", size=6),
                  Read()),
                 (Resp(200, body=b"/a"),)),),
         (U(b"POST /a HTTP/1.1", b"host: x", b"transfer-encoding: chunked", body=BODY),),
         settings=(("upstream_timeout", T), ("client_timeout", T))),
    Case("slow_steady_download",
         "a response slower than upstream_timeout in total, but with steady progress, is not cut",
         (Client((Write(GET_A), Read()), (Resp(200, body=BODY),)),),
         (U(b"GET /a HTTP/1.1", b"host: x"),),
         script=(Recv(), Send(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(BODY)),
                 SendSlowly(BODY, 20, 0.1), *DEFAULT_SCRIPT),
         settings=(("upstream_timeout", T), ("client_timeout", T))),
    Case("stalled_upload",
         "a client that stops sending its body: 408 and close after client_timeout; the "
         "upstream connection that got part of it is closed",
         (Client((Write(b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789"),),
                 (Resp(408, error=TIMEOUT),), closed=True),),
         (), upstream_rest=None, upstream_all_closed=True,
         settings=(("client_timeout", T), ("upstream_timeout", 10))),
    Case("upstream_stalls",
         "an upstream that stops answering: 504 after upstream_timeout; that connection is "
         "closed and the client's carries on",
         (Client((Write(GET_A), Read(), Write(GET_B), Read()),
                 (Resp(504, error=TIMEOUT), Resp(200, body=b"/b"))),),
         (U(b"GET /a HTTP/1.1", b"host: x"), U(b"GET /b HTTP/1.1", b"host: x")),
         scripts=((Recv(), Hold()),), upstream_closed=(0,),
         settings=(("upstream_timeout", T),)),
    Case("upstream_stalls_mid_response",
         "an upstream that stops in the middle of a body: the client's connection is closed "
         "(the response cannot be completed), and so is the upstream's",
         (Client((Write(GET_A), Read()), (Resp(200, complete=False),), closed=True),),
         (U(b"GET /a HTTP/1.1", b"host: x"),),
         scripts=((Recv(), Send(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"), Hold()),),
         upstream_closed=(0,), settings=(("upstream_timeout", T),)),
    Case("tunnel_idle_closed",
         "a tunnel idle in both directions for tunnel_timeout is closed, both sides",
         (Client((Write(WS), Read()), (Resp(101),), closed=True, tunnel=b""),),
         (U(b"GET /ws HTTP/1.1", b"host: x", b"connection: upgrade", b"upgrade: websocket",
            b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==", b"sec-websocket-version: 13"),),
         script=(Recv(), Send(SWITCH), Echo()), upstream_closed=(0,),
         settings=(("tunnel_timeout", T),)),
    Case("tunnel_busy_not_cut",
         "a tunnel with traffic more often than tunnel_timeout is not cut",
         (Client((Write(WS), Read(), *(a for c in b"abcdefgh" for a in
                                       (Pause(0.2), Write(bytes([c])), ReadRaw(1)))),
                 (Resp(101),), closed=False, tunnel=b"abcdefgh"),),
         (U(b"GET /ws HTTP/1.1", b"host: x", b"connection: upgrade", b"upgrade: websocket",
            b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==", b"sec-websocket-version: 13"),),
         upstream_rest=b"abcdefgh", script=(Recv(), Send(SWITCH), Echo()),
         settings=(("tunnel_timeout", T),)),
)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_timeouts(case: Case, conform: Conform) -> None:
    await conform(case)
