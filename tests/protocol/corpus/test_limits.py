"""Limits (issue 11, item 9): a request header section over max_header_bytes is 431; a response
header section over max_response_header_bytes (a 4 MB one) is 502, the client told and the
upstream connection closed; connections beyond max_connections on a listener get a 503 with a
JSON body and `connection: close`, the others unaffected."""

from __future__ import annotations

import pytest

from tests.protocol.corpus.conftest import Conform
from tests.protocol.corpus.harness import (
    Case,
    Client,
    Connect,
    Pause,
    Read,
    Resp,
    U,
    Write,
    simple,
)
from tests.protocol.corpus.rawupstream import DEFAULT_SCRIPT, Hold, Recv, Send

LIMIT = (("max_header_bytes", 4096),)
TOO_LARGE = r"header|large|limit"
GET_B = b"GET /b HTTP/1.1\r\nhost: x\r\n\r\n"
HUGE_HEAD = b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * (4 << 20) + b"\r\ncontent-length: 2\r\n\r\nok"

CASES: tuple[Case, ...] = (
    simple("request_header_over_limit",
           "one 5000-byte field with max_header_bytes 4096: 431, nothing forwarded",
           b"GET /a HTTP/1.1\r\nhost: x\r\nx-big: " + b"b" * 5000 + b"\r\n\r\n",
           (Resp(431, error=TOO_LARGE),), (), closed=True, settings=LIMIT),
    simple("request_many_fields_over_limit",
           "many small fields adding up past max_header_bytes: 431",
           b"GET /a HTTP/1.1\r\nhost: x\r\n"
           + b"".join(b"x-f%03d: %s\r\n" % (i, b"v" * 50) for i in range(100)) + b"\r\n",
           (Resp(431, error=TOO_LARGE),), (), closed=True, settings=LIMIT),
    simple("request_header_under_limit", "a 3000-byte field under the limit passes",
           b"GET /a HTTP/1.1\r\nhost: x\r\nx-big: " + b"b" * 3000 + b"\r\n\r\n",
           (Resp(200, body=b"/a"),), (U(b"GET /a HTTP/1.1", b"host: x", b"x-big: " + b"b" * 3000),),
           settings=LIMIT),
    simple("request_target_over_limit",
           "a request line longer than the whole limit: 414 or 431, nothing forwarded",
           b"GET /" + b"p" * 6000 + b" HTTP/1.1\r\nhost: x\r\n\r\n",
           (Resp((414, 431), error=TOO_LARGE + "|uri|target|line"),), (), closed=True,
           settings=LIMIT),
    Case("response_header_4mb",
         "a 4 MB response header section: 502 to the client, that upstream connection closed; "
         "the client's connection carries the next request",
         (Client((Write(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n"), Read(), Write(GET_B), Read()),
                 (Resp(502, error=TOO_LARGE + "|response"), Resp(200, body=b"/b")),
                 closed=None),),
         (U(b"GET /a HTTP/1.1", b"host: x"), U(b"GET /b HTTP/1.1", b"host: x")),
         scripts=((Recv(), Send(HUGE_HEAD), Hold()),), upstream_closed=(0,)),
    simple("response_header_under_limit", "a 30 KB response header under the default limit",
           b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n", (Resp(200, body=b"ok"),),
           (U(b"GET /a HTTP/1.1", b"host: x"),),
           script=(Recv(), Send(b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * 30000
                                + b"\r\ncontent-length: 2\r\n\r\nok"), *DEFAULT_SCRIPT)),
    Case("max_connections",
         "with max_connections 2, a third connection gets a 503 with a JSON body and "
         "`connection: close`; the two others are served as usual",
         (Client((Connect(), Pause(0.6), Write(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\n"), Read()),
                 (Resp(200, body=b"/a"),)),
          Client((Connect(), Pause(0.6), Write(GET_B), Read()), (Resp(200, body=b"/b"),)),
          Client((Pause(0.3), Write(b"GET /c HTTP/1.1\r\nhost: x\r\n\r\n")),
                 (Resp(503, error=r"connection|limit|capacity|busy",
                       headers=((b"connection", b"close"),)),), closed=True)),
         (U(b"GET /a HTTP/1.1", b"host: x"), U(b"GET /b HTTP/1.1", b"host: x")),
         any_order=True, settings=(("max_connections", 2),)),
)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_limits(case: Case, conform: Conform) -> None:
    await conform(case)
