"""Smuggling and desync: requests the router and an upstream could frame differently, and
responses an upstream sends beyond the one it was asked for (issue 11, items 1 and 2).

Request side: framing fields are never dropped because `Connection` names them, obfuscated
Transfer-Encoding is refused, a malformed chunked body ends the exchange on both sides (the
upstream never sees a complete request). Response side: bytes after a complete response reach
nobody and close that upstream connection; the client's connection stays usable, and its next
request gets a fresh upstream connection, never the stray bytes.
"""

from __future__ import annotations

import pytest

from tests.protocol.corpus.conftest import Conform
from tests.protocol.corpus.harness import (
    Case,
    Client,
    Pause,
    Read,
    Resp,
    U,
    Write,
    simple,
)
from tests.protocol.corpus.rawupstream import DEFAULT_SCRIPT, Hold, Recv, Send, Sleep

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
# A whole second response, claiming to answer the request of client b1.
EVIL = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nx-req-id: b1\r\n\r\nevil"
TE_BAD = r"transfer-encoding|coding|chunk|invalid|header|malformed"
CHUNK_BAD = r"chunk|malformed|invalid|body"


def _refused(name: str, why: str, data: bytes, names: str = TE_BAD,
             status: int | tuple[int, ...] = 400) -> Case:
    return simple(name, why, data, (Resp(status, error=names),), (), closed=True)


def _bad_chunks(name: str, why: str, chunks: bytes) -> Case:
    """A chunked body that breaks after the head was (possibly) forwarded: the upstream must not
    see a complete request, and any connection it got a partial one on is closed."""
    return Case(name, why,
                (Client((Write(b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n"
                               b"\r\n" + chunks),),
                        (Resp(400, error=CHUNK_BAD),), closed=True),),
                (), upstream_rest=None, upstream_all_closed=True)


def _after(name: str, why: str, first: tuple[object, ...]) -> Case:
    """One client, two requests in turn; the first upstream connection misbehaves after its
    answer; the second request must get a fresh connection and its own answer."""
    return Case(
        name, why,
        (Client((Write(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n"), Read(), Pause(0.5),
                 Write(b"GET /b HTTP/1.1\r\nhost: x\r\nx-req-id: b1\r\n\r\n"), Read()),
                (Resp(200, body=b"ok"), Resp(200, body=b"/b", req_id=b"b1"))),),
        (U(b"GET /a HTTP/1.1", b"host: x"), U(b"GET /b HTTP/1.1", b"host: x", b"x-req-id: b1")),
        scripts=(first,),  # type: ignore[arg-type]
        upstream_conns=2, upstream_closed=(0,))


def _two_clients(name: str, why: str, first: tuple[object, ...]) -> Case:
    """Client a asks first; its upstream connection then sends a stray response claiming to be
    b1's; client b asks later on its own connection and must get its own answer."""
    return Case(
        name, why,
        (Client((Write(b"GET /a HTTP/1.1\r\nhost: x\r\nx-req-id: a1\r\n\r\n"), Read(),
                 Pause(0.8)),
                (Resp(200, body=b"ok"),)),
         Client((Pause(0.4), Write(b"GET /b HTTP/1.1\r\nhost: x\r\nx-req-id: b1\r\n\r\n"),
                 Read()),
                (Resp(200, body=b"/b", req_id=b"b1"),))),
        (U(b"GET /a HTTP/1.1", b"host: x", b"x-req-id: a1"),
         U(b"GET /b HTTP/1.1", b"host: x", b"x-req-id: b1")),
        scripts=(first,),  # type: ignore[arg-type]
        upstream_closed=(0,))


CASES: tuple[Case, ...] = (
    simple("connection_names_content_length",
           "`Connection: content-length` must not strip the framing: the body (itself a "
           "request) stays the POST's body, and exactly one request reaches the upstream",
           b"POST /a HTTP/1.1\r\nhost: x\r\nconnection: content-length\r\ncontent-length: %d"
           b"\r\n\r\n%b" % (len(SMUGGLED), SMUGGLED),
           (Resp(200, body=b"/a"),),
           (U(b"POST /a HTTP/1.1", b"host: x", b"content-length: %d" % len(SMUGGLED),
              body=SMUGGLED),)),
    simple("connection_names_transfer_encoding",
           "`Connection: transfer-encoding` must not strip chunked framing",
           b"POST /a HTTP/1.1\r\nhost: x\r\nconnection: transfer-encoding\r\n"
           b"transfer-encoding: chunked\r\n\r\n%x\r\n%b\r\n0\r\n\r\n" % (len(SMUGGLED),
                                                                      SMUGGLED),
           (Resp(200, body=b"/a"),),
           (U(b"POST /a HTTP/1.1", b"host: x", b"transfer-encoding: chunked", body=SMUGGLED),)),
    simple("connection_close_and_content_length",
           "`Connection: close, content-length`: close honoured, the length kept",
           b"POST /a HTTP/1.1\r\nhost: x\r\nconnection: close, content-length\r\n"
           b"content-length: %d\r\n\r\n%b" % (len(SMUGGLED), SMUGGLED),
           (Resp(200, body=b"/a", headers=((b"connection", b"close"),)),),
           (U(b"POST /a HTTP/1.1", b"host: x", b"content-length: %d" % len(SMUGGLED),
              body=SMUGGLED),), closed=True),
    simple("connection_names_custom_header",
           "a header named in Connection is removed, and Connection itself (RFC 9110 §7.6.1)",
           b"GET /a HTTP/1.1\r\nhost: x\r\nconnection: x-hop, keep-alive\r\nx-hop: 1\r\n"
           b"x-end: 2\r\n\r\n",
           (Resp(200, body=b"/a"),), (U(b"GET /a HTTP/1.1", b"host: x", b"x-end: 2"),)),
    simple("hop_by_hop_request_headers",
           "Keep-Alive, Proxy-Connection, TE, Trailer and Upgrade (without an upgrade) are "
           "hop-by-hop: not forwarded",
           b"GET /a HTTP/1.1\r\nhost: x\r\nkeep-alive: timeout=5\r\nproxy-connection: "
           b"keep-alive\r\nte: trailers\r\ntrailer: x-sum\r\nupgrade: foo/1\r\nx-end: 2\r\n\r\n",
           (Resp(200, body=b"/a"),), (U(b"GET /a HTTP/1.1", b"host: x", b"x-end: 2"),)),
    simple("response_connection_named_headers",
           "a response header named in the response's Connection is removed, as are "
           "hop-by-hop ones; Content-Length named there still frames the body",
           b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n",
           (Resp(200, body=b"hello", headers=((b"x-end", b"2"),),
                 absent=(b"x-hop", b"keep-alive", b"proxy-connection", b"trailer",
                         b"upgrade")),),
           (U(b"GET /a HTTP/1.1", b"host: x"),),
           script=(Recv(), Send(b"HTTP/1.1 200 OK\r\nconnection: x-hop, content-length\r\n"
                                b"x-hop: 1\r\nkeep-alive: timeout=5\r\nproxy-connection: "
                                b"keep-alive\r\ntrailer: x-sum\r\nupgrade: foo/1\r\nx-end: 2"
                                b"\r\ncontent-length: 5\r\n\r\nhello"), *DEFAULT_SCRIPT)),
    _refused("te_and_cl_reversed", "TE before CL is still both: 400",
             b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 4"
             b"\r\n\r\n0\r\n\r\n"),
    _refused("te_and_cl_zero", "`content-length: 0` with chunked: still both",
             b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\ntransfer-encoding: chunked"
             b"\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
    _refused("te_space_before_colon", "`Transfer-Encoding : chunked` (RFC 9112 §5.1: MUST 400)",
             b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding : chunked\r\n\r\n0\r\n\r\n"),
    _refused("te_vertical_tab", "`Transfer-Encoding:\\x0bchunked`: VT is not OWS",
             b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding:\x0bchunked\r\n\r\n0\r\n\r\n"),
    _refused("te_obs_fold", "the coding on a continuation line",
             b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding:\r\n chunked\r\n\r\n0\r\n\r\n"),
    _refused("te_xchunked", "`xchunked` is not chunked (400 per RFC 9112 §6.3, or 501)",
             b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: xchunked\r\n\r\n0\r\n\r\n",
             status=(400, 501)),
    _refused("te_chunked_twice", "chunked applied twice is invalid (RFC 9112 §6.1)",
             b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked, chunked\r\n\r\n"
             b"0\r\n\r\n", status=(400, 501)),
    _refused("te_two_fields", "chunked then another coding in a second field: chunked not last",
             b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n"
             b"transfer-encoding: identity\r\n\r\n0\r\n\r\n", status=(400, 501)),
    _refused("te_in_http10", "Transfer-Encoding in an HTTP/1.0 request: faulty framing "
             "(RFC 9112 §6.1)",
             b"POST /a HTTP/1.0\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello"
             b"\r\n0\r\n\r\n", status=(400, 501)),
    _bad_chunks("chunk_size_not_hex", "`zz` is not a chunk size", b"zz\r\nhello\r\n0\r\n\r\n"),
    _bad_chunks("chunk_size_0x", "`0x5`: chunk sizes have no prefix",
                b"0x5\r\nhello\r\n0\r\n\r\n"),
    _bad_chunks("chunk_size_overflow", "a chunk size past 2^64 must not wrap around",
                b"10000000000000005\r\nhello\r\n0\r\n\r\n"),
    _bad_chunks("chunk_data_longer_than_size", "chunk data must be followed by CRLF",
                b"3\r\nhello\r\n0\r\n\r\n"),
    _bad_chunks("chunk_lf_only", "LF-only chunk lines",
                b"5\nhello\n0\n\n"),
    _bad_chunks("chunk_size_negative", "`-5` is not a chunk size", b"-5\r\nhello\r\n0\r\n\r\n"),
    _after("bytes_after_response_same_packet",
           "a second response in the same packet as the first reaches nobody and closes that "
           "upstream connection; the next request gets a fresh one",
           (Recv(), Send(OK + EVIL), Hold())),
    _after("bytes_after_response_while_idle",
           "bytes a pooled connection sends while idle reach nobody and close it",
           (Recv(), Send(OK), Sleep(0.2), Send(EVIL), Hold())),
    _after("body_longer_than_content_length",
           "more body bytes than Content-Length said: the extra bytes reach nobody",
           (Recv(), Send(OK + b"EXTRA-BYTES"), Hold())),
    Case(
        "head_response_with_body_bytes",
        "a HEAD response followed by body bytes: they are stray bytes, not the next answer",
        (Client((Write(b"HEAD /a HTTP/1.1\r\nhost: x\r\n\r\n"), Read(head=True), Pause(0.5),
                 Write(b"GET /b HTTP/1.1\r\nhost: x\r\nx-req-id: b1\r\n\r\n"), Read()),
                (Resp(200, body=b"", headers=((b"content-length", b"4"),)),
                 Resp(200, body=b"/b", req_id=b"b1"))),),
        (U(b"HEAD /a HTTP/1.1", b"host: x"), U(b"GET /b HTTP/1.1", b"host: x", b"x-req-id: b1")),
        scripts=((Recv(), Send(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nevil"), Hold()),),
        upstream_conns=2, upstream_closed=(0,)),
    _after("no_content_with_body_bytes",
           "a 204 has no body: bytes after its head are stray",
           (Recv(), Send(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                         b"HTTP/1.1 204 No Content\r\n\r\nevil"), Hold())),
    Case("pipelined_after_stray_bytes",
         "two pipelined requests; the first answer comes with a stray response that must not "
         "be taken for the second's",
         (Client((Write(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n"
                        b"GET /b HTTP/1.1\r\nhost: x\r\nx-req-id: b1\r\n\r\n"), Read(2)),
                 (Resp(200, body=b"ok"), Resp(200, body=b"/b", req_id=b"b1"))),),
         (U(b"GET /a HTTP/1.1", b"host: x"), U(b"GET /b HTTP/1.1", b"host: x", b"x-req-id: b1")),
         scripts=((Recv(), Send(OK + EVIL), Hold()),), upstream_closed=(0,)),
    _two_clients("two_clients_stray_same_packet",
                 "the stray response that came with a's answer never reaches b",
                 (Recv(), Send(OK + EVIL), Hold())),
    _two_clients("two_clients_stray_while_idle",
                 "the stray response an idle pooled connection sends never reaches b",
                 (Recv(), Send(OK), Sleep(0.15), Send(EVIL), Hold())),
    _two_clients("two_clients_stray_right_after",
                 "a stray response written just after the answer (its own packet) never "
                 "reaches b",
                 (Recv(), Send(OK), Sleep(0.001), Send(EVIL), Hold())),
)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_smuggling(case: Case, conform: Conform) -> None:
    await conform(case)
