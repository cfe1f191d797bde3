"""Upgrade (RFC 9110 §7.8) and CONNECT: h2c is never forwarded (the request goes on as plain
HTTP/1.1 without Upgrade and HTTP2-Settings); an upgrade request with a body goes as a plain
request; a WebSocket upgrade without a body becomes a tunnel after the upstream's 101, bytes both
ways, including those that came early; CONNECT is 405 (issue 11, item 4)."""

from __future__ import annotations

import pytest

from tests.protocol.corpus.conftest import Conform
from tests.protocol.corpus.harness import (
    Case,
    Client,
    Read,
    ReadRaw,
    Resp,
    U,
    Write,
    simple,
)
from tests.protocol.corpus.rawupstream import Close, Echo, Recv, Send

SETTINGS = b"AAMAAABkAARAAAAAAAIAAAAA"
WS_HEADERS = (b"host: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n"
              b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n")
WS_FORWARDED = (b"host: x", b"connection: upgrade", b"upgrade: websocket",
                b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==", b"sec-websocket-version: 13")
SWITCH = (b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
          b"sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
GET_B = b"GET /b HTTP/1.1\r\nhost: x\r\n\r\n"


def _declined(name: str, why: str, head: bytes, body: bytes, *forwarded: bytes,
              method: bytes = b"GET") -> Case:
    """The upgrade is not forwarded: the upstream gets a plain request and answers it; the
    connection then carries the next request."""
    return Case(name, why,
                (Client((Write(head + body), Read(), Write(GET_B), Read()),
                        (Resp(200, body=b"/a", absent=(b"upgrade",)), Resp(200, body=b"/b"))),),
                (U(method + b" /a HTTP/1.1", b"host: x", *forwarded,
                   body=body.split(b"\r\n")[1] if b"chunked" in head else body),
                 U(b"GET /b HTTP/1.1", b"host: x")))


CASES: tuple[Case, ...] = (
    _declined("h2c_with_settings",
              "`Upgrade: h2c` with HTTP2-Settings is declined: a plain HTTP/1.1 request",
              b"GET /a HTTP/1.1\r\nhost: x\r\nconnection: upgrade, http2-settings\r\n"
              b"upgrade: h2c\r\nhttp2-settings: " + SETTINGS + b"\r\n\r\n", b""),
    _declined("h2c_without_settings", "`Upgrade: h2c` alone is declined the same way",
              b"GET /a HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n", b""),
    _declined("h2c_settings_not_in_connection",
              "HTTP2-Settings is dropped with the h2c upgrade even when Connection omits it",
              b"GET /a HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: h2c\r\n"
              b"http2-settings: " + SETTINGS + b"\r\n\r\n", b""),
    _declined("h2c_with_body", "an h2c upgrade on a POST with a body: a plain POST",
              b"POST /a HTTP/1.1\r\nhost: x\r\nconnection: upgrade, http2-settings\r\n"
              b"upgrade: h2c\r\nhttp2-settings: " + SETTINGS + b"\r\ncontent-length: 5\r\n\r\n",
              b"hello", b"content-length: 5", method=b"POST"),
    _declined("websocket_with_length_body",
              "any upgrade request with a body is forwarded as a plain request",
              b"POST /a HTTP/1.1\r\n" + WS_HEADERS + b"content-length: 5\r\n\r\n", b"hello",
              b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==", b"sec-websocket-version: 13",
              b"content-length: 5", method=b"POST"),
    _declined("websocket_with_chunked_body", "the same with a chunked body",
              b"POST /a HTTP/1.1\r\n" + WS_HEADERS + b"transfer-encoding: chunked\r\n\r\n",
              b"5\r\nhello\r\n0\r\n\r\n",
              b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==", b"sec-websocket-version: 13",
              b"transfer-encoding: chunked", method=b"POST"),
    _declined("upgrade_without_connection_token",
              "Upgrade not named in Connection is not an upgrade, and is hop-by-hop",
              b"GET /a HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\n\r\n", b""),
    Case("websocket_tunnel",
         "a WebSocket upgrade without a body: after the 101 the connection is a tunnel; bytes "
         "the upstream sent right after its 101 arrive first",
         (Client((Write(b"GET /ws HTTP/1.1\r\n" + WS_HEADERS + b"\r\n"), Read(), ReadRaw(5),
                  Write(b"ping"), ReadRaw(4)),
                 (Resp(101, headers=((b"upgrade", b"websocket"),)),), closed=None,
                 tunnel=b"earlyping"),),
         (U(b"GET /ws HTTP/1.1", *WS_FORWARDED),), upstream_rest=b"ping",
         script=(Recv(), Send(SWITCH + b"early"), Echo())),
    Case("websocket_bytes_before_101",
         "bytes the client sends right behind its upgrade request wait for the 101, then go "
         "through the tunnel",
         (Client((Write(b"GET /ws HTTP/1.1\r\n" + WS_HEADERS + b"\r\nhello"), Read(),
                  ReadRaw(5)),
                 (Resp(101),), closed=None, tunnel=b"hello"),),
         (U(b"GET /ws HTTP/1.1", *WS_FORWARDED),), upstream_rest=b"hello",
         script=(Recv(), Send(SWITCH), Echo())),
    Case("websocket_upstream_closes_tunnel",
         "the upstream ends the tunnel: the client's connection ends too",
         (Client((Write(b"GET /ws HTTP/1.1\r\n" + WS_HEADERS + b"\r\n"), Read()),
                 (Resp(101),), closed=True, tunnel=b"bye"),),
         (U(b"GET /ws HTTP/1.1", *WS_FORWARDED),),
         script=(Recv(), Send(SWITCH + b"bye"), Close())),
    simple("websocket_declined_by_upstream",
           "the upstream answers an upgrade request with a plain 200: the client gets it",
           b"GET /ws HTTP/1.1\r\n" + WS_HEADERS + b"\r\n", (Resp(200, body=b"/ws"),),
           (U(b"GET /ws HTTP/1.1", *WS_FORWARDED),), closed=None),
    Case("unasked_101_is_502",
         "an upstream that switches protocols for a request that did not ask to upgrade: "
         "502, no tunnel, the bytes after its 101 reach nobody",
         (Client((Write(GET_B), Read()),
                 (Resp(502, error=r"switched protocols"),), closed=None),),
         (U(b"GET /b HTTP/1.1", b"host: x"),),
         script=(Recv(), Send(SWITCH + b"stray"), Echo())),
    simple("connect_is_405", "CONNECT: 405, nothing forwarded",
           b"CONNECT a.example:443 HTTP/1.1\r\nhost: a.example:443\r\n\r\n",
           (Resp(405, error=r"connect|method"),), (), closed=None),
)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
async def test_upgrade(case: Case, conform: Conform) -> None:
    await conform(case)
