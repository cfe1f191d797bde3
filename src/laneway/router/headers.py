"""Header rules of a proxy (RFC 9110 §7.6.1, RFC 9112 §3.2, §6-7), as bytes.

Decisions where the RFC leaves a choice, in line with HAProxy 2.6 and nginx 1.22:
- `Connection` may name headers to drop, except those that frame the message or say where it
  goes (`content-length`, `transfer-encoding`, `host`): a proxy that drops those lets a body be
  read as a second request (the "Connection: content-length" smuggling shape).
- A request's `transfer-encoding` must be exactly `chunked`; another coding is `501` (nginx).
  A response's codings are kept and `chunked` is re-applied (HTTP/1.1 client), or it is a `502`
  for an HTTP/1.0 client, which cannot be sent a coded body it could not frame.
- An absolute-form target (`GET http://a:81/p HTTP/1.1`) is forwarded in origin-form with
  `host` set to its authority (RFC 9112 §3.2.2: the target's authority wins over `Host`).
"""

from __future__ import annotations

import re

__all__ = [
    "FRAMING",
    "HOP_BY_HOP",
    "PREFACE",
    "absolute_target",
    "drop_named",
    "is_host",
    "is_token",
    "tokens",
]

# Connection-specific fields a proxy must not forward. `trailer` goes too, because re-chunked
# bodies are forwarded without their trailer section; `http2-settings` belongs to `Upgrade: h2c`,
# which the router does not forward.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"transfer-encoding",
    b"upgrade", b"trailer", b"http2-settings",
})
FRAMING = frozenset({b"content-length", b"transfer-encoding", b"host"})
STANDARD_CONNECTION_TOKENS = frozenset({b"close", b"keep-alive", b"upgrade"})

# RFC 9110 §7.2 / RFC 3986 §3.2.2: uri-host [ ":" port ]; an empty value is allowed.
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~%!$&'()*+,;=-]*)(?::[0-9]*)?")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_ABSOLUTE = re.compile(rb"(?i)(https?)://([^/?#\s]*)([^#\s]*)")


def tokens(value: bytes) -> list[bytes]:
    """A comma-separated list's members, lowercased, empty members skipped."""
    return [t.strip(b" \t").lower() for t in value.split(b",") if t.strip(b" \t")]


def is_host(value: bytes) -> bool:
    return _HOST.fullmatch(value) is not None


def is_token(value: bytes) -> bool:
    return _TOKEN.fullmatch(value) is not None


def absolute_target(url: bytes) -> tuple[bytes, bytes] | None:
    """(authority, origin-form target) of an absolute-form target, None for origin-form;
    raises ValueError for an absolute form the router cannot forward."""
    if url[:1] == b"/" or url == b"*":
        return None
    match = _ABSOLUTE.fullmatch(url)
    if match is None:
        raise ValueError("the request target is neither an absolute path nor an http(s) URL")
    authority, rest = match.group(2), match.group(3)
    if not authority or b"@" in authority:
        raise ValueError("the request target's authority is empty or carries user info")
    if not rest.startswith(b"/"):
        rest = b"/" + rest if rest else b"/"
    return authority, rest


def drop_named(lines: list[bytes], connection: list[bytes], start: int) -> list[bytes]:
    """Remove the header lines that `Connection` tokens name, except the standard tokens and
    the framing fields (see the module docstring); `lines[start:]` come in 4-tuples
    (name, b": ", value, b"\\r\\n")."""
    names = frozenset(t for t in connection
                      if t not in STANDARD_CONNECTION_TOKENS and t not in FRAMING)
    if not names:
        return lines
    out = lines[:start]
    for i in range(start, len(lines), 4):
        if lines[i].lower() not in names:
            out.extend(lines[i:i + 4])
    return out


# The client connection preface of HTTP/2 with prior knowledge (RFC 9113 §3.4): how the router
# tells an h2c client from an HTTP/1.1 one on the same port.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
