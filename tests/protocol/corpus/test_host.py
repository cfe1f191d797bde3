"""Host (RFC 9110 §7.2, RFC 9112 §3.2): required once in HTTP/1.1, supplied for HTTP/1.0, and
replaced by the authority of an absolute-form target (issue 11, item 5)."""

from __future__ import annotations

import pytest

from tests.protocol.corpus.conftest import Conform
from tests.protocol.corpus.harness import Case, Resp, U, simple

HOST = r"host"


def _no(name: str, why: str, data: bytes) -> Case:
    return simple(name, why, data, (Resp(400, error=HOST),), (), closed=None)


CASES: tuple[Case, ...] = (
    _no("http11_without_host", "an HTTP/1.1 request without Host: MUST 400",
        b"GET /a HTTP/1.1\r\nx-a: 1\r\n\r\n"),
    _no("two_host_fields", "two Host fields: MUST 400",
        b"GET /a HTTP/1.1\r\nhost: x\r\nhost: y\r\n\r\n"),
    _no("two_host_fields_same_value", "two Host fields, even equal: MUST 400",
        b"GET /a HTTP/1.1\r\nhost: x\r\nhost: x\r\n\r\n"),
    _no("host_invalid_value", "a Host value with a space is not a uri-host: MUST 400",
        b"GET /a HTTP/1.1\r\nhost: x y\r\n\r\n"),
    simple("http10_without_host",
           "HTTP/1.0 without Host: forwarded with the address the client connected to",
           b"GET /a HTTP/1.0\r\n\r\n", (Resp(200, body=b"/a"),),
           (U(b"GET /a HTTP/1.1", b"host: {listen}"),), closed=True),
    simple("http10_with_host", "HTTP/1.0 with Host: forwarded as is",
           b"GET /a HTTP/1.0\r\nhost: x\r\n\r\n", (Resp(200, body=b"/a"),),
           (U(b"GET /a HTTP/1.1", b"host: x"),), closed=True),
    simple("absolute_form_overrides_host",
           "an absolute-form target's authority replaces Host; the target becomes "
           "origin-form (RFC 9112 §3.2.2)",
           b"GET http://a.example:81/p?q HTTP/1.1\r\nhost: other\r\n\r\n",
           (Resp(200, body=b"/p?q"),), (U(b"GET /p?q HTTP/1.1", b"host: a.example:81"),)),
    simple("absolute_form_without_port", "the authority without a port",
           b"GET http://a.example/p HTTP/1.1\r\nhost: a.example\r\n\r\n",
           (Resp(200, body=b"/p"),), (U(b"GET /p HTTP/1.1", b"host: a.example"),)),
    simple("absolute_form_empty_path", "an empty path becomes `/`",
           b"GET http://a.example HTTP/1.1\r\nhost: a.example\r\n\r\n",
           (Resp(200, body=b"/"),), (U(b"GET / HTTP/1.1", b"host: a.example"),)),
    simple("connection_names_host", "`Connection: host` must not remove Host",
           b"GET /a HTTP/1.1\r\nhost: x\r\nconnection: host\r\n\r\n",
           (Resp(200, body=b"/a"),), (U(b"GET /a HTTP/1.1", b"host: x"),)),
    simple("host_with_port", "Host with a port is forwarded unchanged",
           b"GET /a HTTP/1.1\r\nhost: x.example:8080\r\n\r\n",
           (Resp(200, body=b"/a"),), (U(b"GET /a HTTP/1.1", b"host: x.example:8080"),)),
    simple("host_field_name_case", "field names are case-insensitive: `HOST` is Host",
           b"GET /a HTTP/1.1\r\nHOST: x\r\n\r\n",
           (Resp(200, body=b"/a"),), (U(b"GET /a HTTP/1.1", b"host: x"),)),
)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_host(case: Case, conform: Conform) -> None:
    await conform(case)
