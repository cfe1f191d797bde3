"""Framing: how a request's body is delimited, and heads the router must refuse (RFC 9112 §2-§7).

Refused heads get a 400 and reach no upstream: a proxy that forwards what it could not parse
lets the upstream read it differently (the root of request smuggling).
"""

from __future__ import annotations

import pytest

from tests.protocol.corpus.conftest import Conform
from tests.protocol.corpus.harness import (
    Case,
    Client,
    Read,
    Resp,
    U,
    WriteParts,
    simple,
)

BAD = r"malformed|invalid|bad|expected|unexpected"


def _bad(name: str, why: str, data: bytes, names: str = BAD) -> Case:
    return simple(name, why, data, (Resp(400, error=names),), (), closed=True)


def _ok(name: str, why: str, data: bytes, *upstream: object, body: bytes = b"/a") -> Case:
    return simple(name, why, data, (Resp(200, body=body),), tuple(upstream),  # type: ignore[arg-type]
                  closed=False)


POST_CL = b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello"

CASES: tuple[Case, ...] = (
    _ok("content_length_body", "a body delimited by Content-Length is forwarded with it",
        POST_CL, U(b"POST /a HTTP/1.1", b"host: x", b"content-length: 5", body=b"hello")),
    _ok("zero_content_length", "Content-Length: 0 is forwarded as is",
        b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
        U(b"POST /a HTTP/1.1", b"host: x", b"content-length: 0")),
    _ok("get_with_body", "a GET may carry a body; it is framed and forwarded like any other",
        b"GET /a HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc",
        U(b"GET /a HTTP/1.1", b"host: x", b"content-length: 3", body=b"abc")),
    _ok("chunked_body", "a chunked body is forwarded chunked (re-chunked), its bytes intact",
        b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        U(b"POST /a HTTP/1.1", b"host: x", b"transfer-encoding: chunked", body=b"hello world")),
    _ok("chunked_extensions_and_trailer",
        "chunk extensions are framing only; Trailer is hop-by-hop; the body arrives intact",
        b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6;e=\"q\"\r\n world\r\n0\r\nx-sum: 1\r\n\r\n",
        U(b"POST /a HTTP/1.1", b"host: x", b"transfer-encoding: chunked", body=b"hello world")),
    _ok("chunked_uppercase_hex", "chunk sizes are hex, either case",
        b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
        b"A\r\n0123456789\r\n0\r\n\r\n",
        U(b"POST /a HTTP/1.1", b"host: x", b"transfer-encoding: chunked", body=b"0123456789")),
    Case("split_bytewise",
         "a request arriving one byte per packet is the same request",
         (Client((WriteParts(tuple(bytes([c]) for c in POST_CL), gap=0.003), Read()),
                 (Resp(200, body=b"/a"),)),),
         (U(b"POST /a HTTP/1.1", b"host: x", b"content-length: 5", body=b"hello"),)),
    simple("pipelined_post_then_get",
           "a body delimited by Content-Length ends exactly there; the next request follows",
           POST_CL + b"GET /b HTTP/1.1\r\nhost: x\r\n\r\n",
           (Resp(200, body=b"/a"), Resp(200, body=b"/b")),
           (U(b"POST /a HTTP/1.1", b"host: x", b"content-length: 5", body=b"hello"),
            U(b"GET /b HTTP/1.1", b"host: x"))),
    _ok("method_foo_bar", "an extension method (RFC 9110 token) is forwarded as is",
        b"FOO-BAR /a HTTP/1.1\r\nhost: x\r\n\r\n", U(b"FOO-BAR /a HTTP/1.1", b"host: x")),
    _ok("method_purge", "PURGE (a cache extension method) is forwarded as is",
        b"PURGE /a HTTP/1.1\r\nhost: x\r\n\r\n", U(b"PURGE /a HTTP/1.1", b"host: x")),
    _ok("method_query_with_body", "QUERY (draft-ietf-httpbis-safe-method) with its body",
        b"QUERY /a HTTP/1.1\r\nhost: x\r\ncontent-type: text/plain\r\ncontent-length: 4\r\n\r\n"
        b"q=12",
        U(b"QUERY /a HTTP/1.1", b"host: x", b"content-type: text/plain", b"content-length: 4",
          body=b"q=12")),
    _ok("method_lowercase_token", "methods are case-sensitive tokens: `get` is not GET, but is "
        "a token and is forwarded as is",
        b"get /a HTTP/1.1\r\nhost: x\r\n\r\n", U(b"get /a HTTP/1.1", b"host: x")),
    _bad("method_not_a_token", "`(` is not a tchar: not a method", b"GE(T /a HTTP/1.1\r\n"
         b"host: x\r\n\r\n", r"method"),
    _bad("content_length_and_chunked", "CL with TE: 400 (RFC 9112 §6.1: MAY reject; nginx, "
         "HAProxy 2.6 strict)",
         b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"
         b"3\r\nabc\r\n0\r\n\r\n", r"content-length|transfer-encoding"),
    _bad("duplicate_content_length_different",
         "two different lengths: which one the upstream believes is the attack",
         b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
         r"content-length"),
    _bad("duplicate_content_length_same", "duplicate Content-Length fields are refused even "
         "when equal (nginx; RFC 9110 §8.6 allows either)",
         b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ncontent-length: 3\r\n\r\nabc",
         r"content-length"),
    _bad("content_length_list", "`3, 4` is not a length",
         b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 3, 4\r\n\r\nabcd", r"content-length"),
    _bad("content_length_plus", "`+3`: Content-Length is 1*DIGIT",
         b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: +3\r\n\r\nabc", r"content-length"),
    _bad("content_length_negative", "`-1`: Content-Length is 1*DIGIT",
         b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: -1\r\n\r\n", r"content-length"),
    _bad("content_length_hex", "`0x3`: Content-Length is decimal",
         b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 0x3\r\n\r\nabc", r"content-length"),
    _bad("content_length_overflow", "a length past 2^64 must not wrap around",
         b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 18446744073709551619\r\n\r\nabc",
         r"content-length"),
    _bad("bare_lf_line_endings", "LF-only line endings (RFC 9112 §2.2 lets a server reject)",
         b"GET /a HTTP/1.1\nhost: x\n\n", r"\bCR|\bLF|CRLF|line"),
    _bad("bare_lf_in_header", "one LF-only field line among CRLF ones",
         b"GET /a HTTP/1.1\r\nhost: x\nx-a: 1\r\n\r\n", r"\bCR|\bLF|CRLF|line"),
    _bad("bare_cr_in_header", "a bare CR inside a field line (RFC 9112 §2.2: MUST reject or "
         "replace)", b"GET /a HTTP/1.1\r\nhost: x\r\nx-a: 1\r2\r\n\r\n", r"\bCR|\bLF|CRLF|line"),
    _bad("obs_fold", "obs-fold (a continuation line): 400 (RFC 9112 §5.2 lets a server reject)",
         b"GET /a HTTP/1.1\r\nhost: x\r\nx-a: 1\r\n 2\r\n\r\n", r"whitespace|fold|continuation"),
    _bad("nul_in_header_value", "NUL is not a field-value octet",
         b"GET /a HTTP/1.1\r\nhost: x\r\nx-a: 1\x002\r\n\r\n", r"header value|char|NUL"),
    _bad("space_before_colon", "whitespace between field name and colon: MUST 400 "
         "(RFC 9112 §5.1)", b"GET /a HTTP/1.1\r\nhost: x\r\nx-a : 1\r\n\r\n",
         r"header|field|token|colon"),
    _bad("space_in_field_name", "a field name is a token",
         b"GET /a HTTP/1.1\r\nhost: x\r\nx a: 1\r\n\r\n", r"header|field|token"),
    _bad("version_lowercase", "`http/1.1`: HTTP-name is case-sensitive",
         b"GET /a http/1.1\r\nhost: x\r\n\r\n", r"version|HTTP/"),
)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_framing(case: Case, conform: Conform) -> None:
    await conform(case)
