"""Extracting the routing key from request headers (DESIGN.md, routing contract).

The key travels as the W3C baggage member `laneway-key=<key>` (any position, properties allowed,
several `baggage` headers allowed), as the `tracestate` member `laneway=<key>`, or in extra header
names a team configures. Matching follows member boundaries, so `laneway-key=abc` never matches
`laneway-key=abcd` or `xlaneway-key=abc`.

The router calls `key_from_baggage` on every request, so it works on raw header bytes with one
pre-compiled pattern. `parse_baggage` is the plain, slower reading of the W3C grammar; the property
tests hold the fast path to it.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, unquote_to_bytes

__all__ = [
    "BAGGAGE_MEMBER",
    "TRACESTATE_MEMBER",
    "baggage_value",
    "key_from_baggage",
    "key_from_tracestate",
    "parse_baggage",
]

BAGGAGE_MEMBER = "laneway-key"
TRACESTATE_MEMBER = "laneway"

# A member starts at the beginning of the value or after a comma, with optional whitespace (OWS);
# the member's value runs up to its properties (`;`) or the next member (`,`).
_BAGGAGE_RE = re.compile(rb"(?:^|,)[ \t]*laneway-key[ \t]*=[ \t]*([^,;]*)")
_TRACESTATE_RE = re.compile(rb"(?:^|,)[ \t]*laneway[ \t]*=[ \t]*([^,]*)")


def _clean(raw: bytes) -> str | None:
    raw = raw.rstrip(b" \t")
    if not raw:
        return None
    if b"%" in raw:
        # OpenTelemetry's propagator percent-encodes baggage values on the way out.
        raw = unquote_to_bytes(raw)
    try:
        value = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return value or None


def key_from_baggage(value: bytes) -> str | None:
    """The routing key in one `baggage` header value (several headers joined with `,`)."""
    match = _BAGGAGE_RE.search(value)
    if match is None:
        return None
    return _clean(match.group(1))


def key_from_tracestate(value: bytes) -> str | None:
    """The routing key in a `tracestate` header value (member `laneway=<key>`)."""
    match = _TRACESTATE_RE.search(value)
    if match is None:
        return None
    return _clean(match.group(1))


def parse_baggage(value: str) -> dict[str, str]:
    """Read a `baggage` value member by member, as the W3C Baggage grammar says.

    Properties are dropped; the first occurrence of a key wins; malformed members are skipped.
    """
    members: dict[str, str] = {}
    for member in value.split(","):
        head = member.split(";", 1)[0]
        if "=" not in head:
            continue
        name, _, raw = head.partition("=")
        name = name.strip(" \t")
        raw = raw.strip(" \t")
        if not name or name in members:
            continue
        members[name] = unquote(raw)
    return members


def baggage_value(routing_key: str) -> str:
    """The `baggage` header value that carries `routing_key`."""
    return f"{BAGGAGE_MEMBER}={routing_key}"
