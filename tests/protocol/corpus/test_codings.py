"""Transfer codings (RFC 9112 §6-§7): a request coding other than chunked is refused with 501
before anything is forwarded; a response `gzip, chunked` passes to an HTTP/1.1 client as is
(re-chunked, the gzip bytes intact) and is a 502 for an HTTP/1.0 client, which cannot be sent a
transfer coding (issue 11, item 7)."""

from __future__ import annotations

import gzip

import pytest

from tests.protocol.corpus.conftest import Conform
from tests.protocol.corpus.harness import Case, Resp, U, simple
from tests.protocol.corpus.rawupstream import DEFAULT_SCRIPT, Recv, Send

GZ = gzip.compress(b"hello, compressed world\n" * 20, mtime=0)
CODING = r"coding|transfer-encoding|gzip|implemented|support"


def _chunks(data: bytes, size: int = 100) -> bytes:
    out = b"".join(b"%x\r\n%b\r\n" % (len(data[i:i + size]), data[i:i + size])
                   for i in range(0, len(data), size))
    return out + b"0\r\n\r\n"


GZ_CHUNKED = (b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: gzip, chunked"
              b"\r\n\r\n" + _chunks(GZ))

CASES: tuple[Case, ...] = (
    simple("request_gzip_chunked",
           "a request coding other than chunked: 501 (RFC 9112 §6.1), nothing forwarded",
           b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip, chunked\r\n\r\n"
           + _chunks(GZ), (Resp(501, error=CODING),), (), closed=True),
    simple("request_deflate_chunked", "the same for deflate",
           b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: deflate, chunked\r\n\r\n"
           b"0\r\n\r\n", (Resp(501, error=CODING),), (), closed=True),
    simple("request_gzip_alone", "gzip without chunked: the body cannot be delimited (400, or "
           "501 as for any coding but chunked)",
           b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\n" + GZ,
           (Resp((400, 501), error=CODING),), (), closed=True),
    simple("request_identity", "`identity` is no longer a transfer coding (RFC 9112 §7)",
           b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: identity\r\ncontent-length: 2"
           b"\r\n\r\nhi", (Resp((400, 501), error=CODING + "|content-length"),), (),
           closed=True),
    simple("request_chunked_mixed_case", "coding names are case-insensitive: `Chunked`",
           b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: Chunked\r\n\r\n"
           b"5\r\nhello\r\n0\r\n\r\n", (Resp(200, body=b"/a"),),
           (U(b"POST /a HTTP/1.1", b"host: x", b"transfer-encoding: chunked", body=b"hello"),)),
    simple("request_content_encoding_untouched",
           "Content-Encoding is the representation's: forwarded with the bytes as sent",
           b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n"
           b"\r\n%b" % (len(GZ), GZ), (Resp(200, body=b"/a"),),
           (U(b"POST /a HTTP/1.1", b"host: x", b"content-encoding: gzip",
              b"content-length: %d" % len(GZ), body=GZ),)),
    simple("response_gzip_chunked_http11",
           "a response `transfer-encoding: gzip, chunked` reaches an HTTP/1.1 client with that "
           "coding and the gzip bytes intact",
           b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n",
           (Resp(200, body=GZ, headers=((b"transfer-encoding", b"gzip, chunked"),)),),
           (U(b"GET /a HTTP/1.1", b"host: x"),), script=(Recv(), Send(GZ_CHUNKED),
                                                         *DEFAULT_SCRIPT)),
    simple("response_gzip_chunked_http10",
           "an HTTP/1.0 client cannot be sent a transfer coding: 502",
           b"GET /a HTTP/1.0\r\nhost: x\r\n\r\n", (Resp(502, error=CODING),),
           (U(b"GET /a HTTP/1.1", b"host: x"),), closed=True,
           script=(Recv(), Send(GZ_CHUNKED), *DEFAULT_SCRIPT)),
    simple("response_chunked_to_http10",
           "a chunked response to an HTTP/1.0 client: de-chunked, ended by the close",
           b"GET /a HTTP/1.0\r\nhost: x\r\n\r\n",
           (Resp(200, body=b"hello world", absent=(b"transfer-encoding",)),),
           (U(b"GET /a HTTP/1.1", b"host: x"),), closed=True,
           script=(Recv(), Send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"), *DEFAULT_SCRIPT)),
    simple("response_chunked_trailer_and_extensions",
           "a chunked response with extensions and a trailer: the body intact",
           b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n", (Resp(200, body=b"hello world"),),
           (U(b"GET /a HTTP/1.1", b"host: x"),),
           script=(Recv(), Send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n"
                                b"trailer: x-sum\r\n\r\n5;a=b\r\nhello\r\n6\r\n world\r\n0\r\n"
                                b"x-sum: 9\r\n\r\n"), *DEFAULT_SCRIPT)),
    simple("response_content_encoding_untouched",
           "a response Content-Encoding and its bytes pass untouched",
           b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n",
           (Resp(200, body=GZ, headers=((b"content-encoding", b"gzip"),
                                        (b"content-length", b"%d" % len(GZ)))),),
           (U(b"GET /a HTTP/1.1", b"host: x"),),
           script=(Recv(), Send(b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\n"
                                b"content-length: %d\r\n\r\n%b" % (len(GZ), GZ)),
                   *DEFAULT_SCRIPT)),
    simple("response_length_and_chunked",
           "a response with both Content-Length and chunked: never passed on with both (502, "
           "or chunked wins and the length goes, RFC 9112 §6.3)",
           b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n", (Resp((200, 502)),),
           (U(b"GET /a HTTP/1.1", b"host: x"),), closed=None,
           script=(Recv(), Send(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n"
                                b"transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
                   *DEFAULT_SCRIPT)),
    simple("response_duplicate_lengths",
           "a response with two different Content-Lengths: 502 (RFC 9110 §8.6)",
           b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n", (Resp(502, error=r"length|malformed|invalid"),),
           (U(b"GET /a HTTP/1.1", b"host: x"),), closed=None,
           script=(Recv(), Send(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n"
                                b"content-length: 5\r\n\r\nhello"), *DEFAULT_SCRIPT)),
)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_codings(case: Case, conform: Conform) -> None:
    await conform(case)
