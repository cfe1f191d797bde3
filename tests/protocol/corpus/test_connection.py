"""Connection management (RFC 9112 §9): persistence, `Connection: close`, HTTP/1.0 keep-alive,
pipelining in order, HEAD/204/304/1xx without bodies, half-close, and the upstream pool: a pooled
connection is reused only when idle, reading, and with nothing pending (issue 11, items 3 and 6).
"""

from __future__ import annotations

import pytest

from tests.protocol.corpus.conftest import Conform
from tests.protocol.corpus.harness import (
    CAction,
    Case,
    Client,
    Connect,
    HalfClose,
    Pause,
    Read,
    Resp,
    Stall,
    U,
    Write,
    simple,
)
from tests.protocol.corpus.rawupstream import (
    DEFAULT_SCRIPT,
    ByPath,
    Close,
    Loop,
    Recv,
    Respond,
    Send,
    Sleep,
)

FILL = bytes(range(256)) * 8192  # 2 MiB: fills most of the kernel buffers towards a stalled reader
PIECE = bytes(range(256)) * 240  # 60 KiB: with its head, one loopback segment, one read
A_PIECES = 40  # with FILL, 4.4 MB: more than those buffers hold (about 3.5 MB on Linux defaults)
B_REQUESTS = 300  # b keeps asking for longer than a keeps sending

GET_A = b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n"
GET_B = b"GET /b HTTP/1.1\r\nhost: x\r\n\r\n"


def _get(path: bytes, rid: bytes) -> bytes:
    return b"GET %b HTTP/1.1\r\nhost: x\r\nx-req-id: %b\r\n\r\n" % (path, rid)


def _slow_reader_case() -> Case:
    """Client a sends requests for 60 KB answers without reading any: once the kernel buffers
    towards it are full, an answer that completes on the router leaves its upstream connection
    held back by a's backpressure. Client b asks all the while; if that connection went back to
    the pool, b's next request would sit on a connection nobody reads (then 504)."""
    a_actions: tuple[CAction, ...] = (Connect(rcvbuf=8192), Stall(),
                                      Write(_get(b"/fill", b"fill")), Pause(0.3))
    for i in range(A_PIECES):
        a_actions += (Write(_get(b"/piece", b"a%d" % i)), Pause(0.05))
    a_actions += (Read(A_PIECES + 1),)
    # b asks often but is idle most of the time, so that a connection the pool was given last is
    # the one its next request takes.
    b_actions: tuple[CAction, ...] = (Pause(0.2),)
    for i in range(B_REQUESTS):
        b_actions += (Write(_get(b"/b", b"b%d" % i)), Read(), Pause(0.01))
    piece = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%b" % (len(PIECE), PIECE)
    fill = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%b" % (len(FILL), FILL)
    return Case(
        "slow_reader_does_not_lend_its_connection",
        "a pooled upstream connection is reused only when idle, reading and with nothing "
        "pending: a client slow to read must not make another client's request wait or 504",
        (Client(a_actions, (Resp(200, body=FILL),
                            *(Resp(200, body=PIECE) for _ in range(A_PIECES))),
                read_timeout=10),
         Client(b_actions, tuple(Resp(200, body=b"/b", req_id=b"b%d" % i)
                                 for i in range(B_REQUESTS)), read_timeout=10)),
        (U(b"GET /fill HTTP/1.1", b"host: x", b"x-req-id: fill"),
         *(U(b"GET /piece HTTP/1.1", b"host: x", b"x-req-id: a%d" % i) for i in range(A_PIECES)),
         *(U(b"GET /b HTTP/1.1", b"host: x", b"x-req-id: b%d" % i) for i in range(B_REQUESTS))),
        script=(Loop((Recv(), ByPath(((b"/piece", piece), (b"/fill", fill))))),),
        any_order=True, settings=(("upstream_timeout", 2.0),), deadline=40)


CASES: tuple[Case, ...] = (
    Case(
        "keep_alive_reuses_upstream",
        "two requests in turn on one keep-alive client: one pooled upstream connection",
        (Client((Write(GET_A), Read(), Write(GET_B), Read()),
                (Resp(200, body=b"/a"), Resp(200, body=b"/b"))),),
        (U(b"GET /a HTTP/1.1", b"host: x"), U(b"GET /b HTTP/1.1", b"host: x")),
        upstream_conns=1),
    simple("connection_close_then_more_bytes",
           "after `Connection: close` the first request is answered, the rest ignored, the "
           "connection closed after the answer",
           b"GET /a HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n" + GET_B,
           (Resp(200, body=b"/a", headers=((b"connection", b"close"),)),),
           (U(b"GET /a HTTP/1.1", b"host: x"),), closed=True),
    simple("http10_closes_by_default",
           "an HTTP/1.0 request without keep-alive: answered, then the connection closes",
           b"GET /a HTTP/1.0\r\nhost: x\r\n\r\n", (Resp(200, body=b"/a"),),
           (U(b"GET /a HTTP/1.1", b"host: x"),), closed=True),
    Case("http10_keep_alive",
         "HTTP/1.0 with `Connection: keep-alive`: the response says keep-alive (RFC 9112 §C.2.2) "
         "and the connection carries a second request",
         (Client((Write(b"GET /a HTTP/1.0\r\nhost: x\r\nconnection: keep-alive\r\n\r\n"), Read(),
                  Write(b"GET /b HTTP/1.0\r\nhost: x\r\nconnection: keep-alive\r\n\r\n"),
                  Read()),
                 (Resp(200, body=b"/a", headers=((b"connection", b"keep-alive"),)),
                  Resp(200, body=b"/b", headers=((b"connection", b"keep-alive"),)))),),
         (U(b"GET /a HTTP/1.1", b"host: x"), U(b"GET /b HTTP/1.1", b"host: x"))),
    simple("http10_keep_alive_close_delimited",
           "an HTTP/1.0 keep-alive client, a response without length: the body ends with the "
           "connection (no chunked for 1.0)",
           b"GET /a HTTP/1.0\r\nhost: x\r\nconnection: keep-alive\r\n\r\n",
           (Resp(200, body=b"whole body", absent=(b"transfer-encoding",)),),
           (U(b"GET /a HTTP/1.1", b"host: x"),), closed=True,
           script=(Recv(), Send(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nwhole body"),
                   Close())),
    Case("http11_close_delimited_response",
         "an HTTP/1.1 client, a close-delimited response: the client gets the whole body "
         "(re-chunked, or close-delimited)",
         (Client((Write(GET_A), Read()), (Resp(200, body=b"whole body"),), closed=None),),
         (U(b"GET /a HTTP/1.1", b"host: x"),),
         script=(Recv(), Send(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nwhole body"),
                 Close())),
    simple("pipelined_three_in_order",
           "three pipelined requests in one packet are answered in order",
           _get(b"/1", b"p1") + _get(b"/2", b"p2") + _get(b"/3", b"p3"),
           (Resp(200, body=b"/1", req_id=b"p1"), Resp(200, body=b"/2", req_id=b"p2"),
            Resp(200, body=b"/3", req_id=b"p3")),
           (U(b"GET /1 HTTP/1.1", b"host: x", b"x-req-id: p1"),
            U(b"GET /2 HTTP/1.1", b"host: x", b"x-req-id: p2"),
            U(b"GET /3 HTTP/1.1", b"host: x", b"x-req-id: p3"))),
    simple("pipelined_slow_first",
           "the first of two pipelined requests is slow to answer: the order still holds",
           _get(b"/1", b"p1") + _get(b"/2", b"p2"),
           (Resp(200, body=b"/1", req_id=b"p1"), Resp(200, body=b"/2", req_id=b"p2")),
           (U(b"GET /1 HTTP/1.1", b"host: x", b"x-req-id: p1"),
            U(b"GET /2 HTTP/1.1", b"host: x", b"x-req-id: p2")),
           scripts=((Recv(), Sleep(0.3), Respond(), *DEFAULT_SCRIPT),), any_order=True),
    Case("head_then_get_pipelined",
         "a HEAD response has no body whatever its Content-Length; the next answer follows",
         (Client((Write(b"HEAD /a HTTP/1.1\r\nhost: x\r\n\r\n" + GET_B), Read(head=True),
                  Read()),
                 (Resp(200, body=b"", headers=((b"content-length", b"2"),)),
                  Resp(200, body=b"/b"))),),
         (U(b"HEAD /a HTTP/1.1", b"host: x"), U(b"GET /b HTTP/1.1", b"host: x"))),
    Case("head_response_says_chunked",
         "a HEAD answered with `transfer-encoding: chunked` and no body: nothing to wait for",
         (Client((Write(b"HEAD /a HTTP/1.1\r\nhost: x\r\n\r\n"), Read(head=True), Write(GET_B),
                  Read()),
                 (Resp(200, body=b""), Resp(200, body=b"/b"))),),
         (U(b"HEAD /a HTTP/1.1", b"host: x"), U(b"GET /b HTTP/1.1", b"host: x")),
         scripts=((Recv(), Send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"),
                   *DEFAULT_SCRIPT),)),
    Case("no_content_and_not_modified",
         "204 and 304 have no body (a 304's Content-Length describes the selected "
         "representation); the connection carries on",
         (Client((Write(GET_A), Read(), Write(GET_B), Read(), Write(_get(b"/c", b"c")), Read()),
                 (Resp(204, body=b""), Resp(304, body=b""), Resp(200, body=b"/c"))),),
         (U(b"GET /a HTTP/1.1", b"host: x"), U(b"GET /b HTTP/1.1", b"host: x"),
          U(b"GET /c HTTP/1.1", b"host: x", b"x-req-id: c")),
         scripts=((Recv(), Send(b"HTTP/1.1 204 No Content\r\n\r\n"), Recv(),
                   Send(b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n"),
                   *DEFAULT_SCRIPT),)),
    simple("interim_100_continue",
           "a 100 Continue before the final response reaches the client, then the final one",
           b"POST /a HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 5\r\n\r\n"
           b"hello",
           (Resp(100), Resp(200, body=b"/a")),
           (U(b"POST /a HTTP/1.1", b"host: x", b"expect: 100-continue", b"content-length: 5",
              body=b"hello"),),
           script=(Recv(), Send(b"HTTP/1.1 100 Continue\r\n\r\n"), Respond(),
                   *DEFAULT_SCRIPT)),
    Case("upstream_closes_after_response",
         "the upstream ends its connection after an answer (`connection: close`): the client's "
         "connection is not its to close; the next request gets a new upstream connection",
         (Client((Write(GET_A), Read(), Pause(0.2), Write(GET_B), Read()),
                 (Resp(200, body=b"ok"), Resp(200, body=b"/b"))),),
         (U(b"GET /a HTTP/1.1", b"host: x"), U(b"GET /b HTTP/1.1", b"host: x")),
         scripts=((Recv(), Send(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2"
                                b"\r\n\r\nok"), Close()),),
         upstream_conns=2),
    Case("half_close_after_request",
         "a client that sends its request then shuts down its sending side still gets the "
         "answer (the close follows it)",
         (Client((Write(GET_A), HalfClose(), Read()), (Resp(200, body=b"/a"),), closed=True),),
         (U(b"GET /a HTTP/1.1", b"host: x"),)),
    _slow_reader_case(),
)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_connection(case: Case, conform: Conform) -> None:
    await conform(case)
