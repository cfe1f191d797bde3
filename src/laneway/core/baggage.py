"""Extracting the routing key from request headers (DESIGN.md, routing contract).

The key travels as the W3C baggage member `laneway-key=<key>` (any position, properties allowed,
several `baggage` headers allowed, joined with `,` in order), as the `tracestate` member
`laneway=<key>`, or in extra header names a team configures. Matching follows member boundaries,
so `laneway-key=abc` never matches `laneway-key=abcd` or `xlaneway-key=abc`.

The router calls `baggage_key` on every request, so it works on raw header bytes with one
pre-compiled pattern and looks further only when the name occurs more than once. `parse_baggage`
is the plain, slower reading of the same rules; the property tests hold the fast path to it, and
`core.kubernetes.regex` renders the same rules as RE2 for Istio. `with_key` is how laneway's own
tools (`laneway request`, the run proxy, MCP `send_request`, `message_headers`) put a key on a
request: they replace a key, never add a second one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import unquote, unquote_to_bytes

__all__ = [
    "BAGGAGE_MEMBER",
    "TRACESTATE_MEMBER",
    "baggage_key",
    "baggage_value",
    "headers_with_key",
    "key_from_baggage",
    "key_from_tracestate",
    "member_key",
    "parse_baggage",
    "with_key",
]

BAGGAGE_MEMBER = "laneway-key"
TRACESTATE_MEMBER = "laneway"

_BAGGAGE_NAME = BAGGAGE_MEMBER.encode()
_TRACESTATE_NAME = TRACESTATE_MEMBER.encode()
# A member starts at the beginning of the value or after a comma, with optional whitespace (OWS);
# its raw value runs up to its properties (`;`) or the next member (`,`).
_BAGGAGE_RE = re.compile(rb"(?:^|,)[ \t]*laneway-key[ \t]*=([^,;]*)")
_TRACESTATE_RE = re.compile(rb"(?:^|,)[ \t]*laneway[ \t]*=([^,;]*)")
_baggage_at = re.compile(rb"laneway-key[ \t]*=([^,;]*)").search
_KEY_MEMBER_RE = re.compile(r"[ \t]*laneway-key[ \t]*=")
_OWS = b" \t+"  # `+` too: OpenTelemetry-Python form-encodes a space as `+`


# How a member's value is read, as real stacks send it: the raw value runs to the member's
# properties (`;`) or its end; it is percent-decoded, cut at its properties again and stripped of
# whitespace again. OpenTelemetry-Python 1.45.2 re-injects `K;ttl=60` as `K%3Bttl%3D60` and
# `K ;p=1` as `K+%3Bp%3D1` (it form-encodes: a space is `+`), so `+` counts as whitespace at the
# ends of a value (routing keys never contain it). Bytes that are not UTF-8 are replaced, not
# dropped: such a member still carries a (wrong) value, as it does in OpenTelemetry-Python.
def _clean(raw: bytes) -> str | None:
    """The key in one member's raw value, or None when it carries none (empty)."""
    if 0x25 in raw:  # `%`; an int is a memchr, `b"%" in raw` a substring search (7x slower)
        raw = unquote_to_bytes(raw).partition(b";")[0]
    raw = raw.strip(_OWS)
    if not raw:
        return None
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw.decode("utf-8", "replace")


# Which member wins, measured (extract then inject with each SDK's W3CBaggagePropagator; the
# tests `tests/unit/test_baggage_sdks.py` repeat it against the real SDKs):
# - OpenTelemetry-Python (opentelemetry-api 1.45.2): the last member of a name wins, an empty value
#   included (`laneway-key=K,laneway-key=` propagates `laneway-key=`); members it finds invalid
#   (a space or `"` inside the value) are skipped; with several `baggage` headers handed over as a
#   list (the ASGI getter does) it reads the first header only.
# - OpenTelemetry-JS (@opentelemetry/api 1.9.1, @opentelemetry/core 2.12.1, node 20): the last
#   member wins too, across several headers in order; a member whose raw value is empty, or whose
#   percent-encoding does not decode, is skipped; properties are kept as they came.
# laneway's rule is the one both SDKs share and the W3C and OpenTelemetry specs describe (a later
# pair takes precedence; an empty value is a value): the last `laneway-key` member of the joined
# header decides, and an empty one means no key. Where an SDK would propagate another member (an
# empty last member under JS, a malformed one under Python, several headers under Python's ASGI
# getter), the members disagree and `baggage_key` reports the conflict, so the hop is marked.
def _several(pattern: re.Pattern[bytes], value: bytes) -> tuple[str | None, bool]:
    """(the last member's key, whether another member carries a different one)."""
    raws = pattern.findall(value)
    if not raws:
        return None, False
    last = raws[-1]
    key = _clean(last)
    for raw in raws[:-1]:
        if raw != last and _clean(raw) != key:
            return key, True
    return key, False


def _text(value: bytes) -> bool:
    """Whether RE2 can read `value`: Envoy matches the rendered regexes in UTF-8 mode, where no
    pattern matches a value with bytes that are not UTF-8, so such a value carries no key here
    either (the W3C grammar allows ASCII only; OpenTelemetry-Python drops non-ASCII members)."""
    if value.isascii():
        return True
    try:
        value.decode()
    except UnicodeDecodeError:
        return False
    return True


def _last(pattern: re.Pattern[bytes], name: bytes, value: bytes) -> tuple[str | None, bool]:
    count = value.count(name)
    if count == 0 or not _text(value):
        return None, False
    if count == 1:
        match = pattern.search(value)
        return (None if match is None else _clean(match.group(1))), False
    return _several(pattern, value)


def baggage_key(value: bytes) -> tuple[str | None, bool]:
    """(routing key, conflict) in a `baggage` value (several headers joined with `,` in order).

    The last `laneway-key` member decides (an empty one: no key). `conflict` is True when the
    members carry different keys (no key counts as one): SDKs may propagate another member, so
    one request can reach two sandboxes, and its hop is marked.
    """
    # The router's hot path. The common cases, no member and one member, cost a count of the
    # name and a search that starts with a literal (the scan the regex engine does fastest),
    # with the member boundary checked by hand: only OWS between it and a comma (or the start).
    count = value.count(_BAGGAGE_NAME)
    if count == 0 or not (value.isascii() or _text(value)):
        return None, False
    if count == 1:
        match = _baggage_at(value)
        if match is None:
            return None, False
        at = match.start()
        if at:
            start = value.rfind(b",", 0, at) + 1
            if start < at and value[start:at].strip(b" \t"):
                return None, False  # `xlaneway-key=`, or inside another member's value
        raw = match.group(1)
        if 0x25 in raw:  # `%`, as in `_clean`
            return _clean(raw), False
        # `_clean` inlined: a piece of a value checked to be UTF-8, cut at ASCII, decodes.
        raw = raw.strip(_OWS)
        return (raw.decode() if raw else None), False
    return _several(_BAGGAGE_RE, value)


def key_from_baggage(value: bytes) -> str | None:
    """The routing key in a `baggage` value: `baggage_key` without the conflict."""
    return baggage_key(value)[0]


def key_from_tracestate(value: bytes) -> str | None:
    """The routing key in a `tracestate` value (member `laneway=<key>`), read like baggage.

    The last member wins here too: OpenTelemetry-JS 2.12.1 keeps the last of duplicate
    tracestate keys (OpenTelemetry-Python 1.45.2 drops a tracestate with duplicates altogether).
    """
    return _last(_TRACESTATE_RE, _TRACESTATE_NAME, value)[0]


def member_key(value: str) -> str | None:
    """The key in a `laneway-key` value as an SDK hands it over, already decoded: cut at its
    properties and whitespace (OpenTelemetry-Python's `get_baggage` returns `K;ttl=60` for
    `K;ttl=60`, and for `K%3Bttl%3D60`)."""
    return value.partition(";")[0].strip(" \t+") or None


def parse_baggage(value: str) -> dict[str, str]:
    """Read a `baggage` value member by member, as the W3C Baggage grammar says.

    Values are read as `baggage_key` reads them (percent-decoded, properties and whitespace cut
    before and after decoding); the last occurrence of a name wins, an empty value included;
    malformed members are skipped.
    """
    members: dict[str, str] = {}
    for member in value.split(","):
        head = member.split(";", 1)[0]
        if "=" not in head:
            continue
        name, _, raw = head.partition("=")
        name = name.strip(" \t")
        if not name:
            continue
        decoded = unquote(raw, errors="replace").split(";", 1)[0]
        members[name] = decoded.strip(" \t+")
    return members


def with_key(baggage: str | None, key: str) -> str:
    """`baggage` carrying `key` as its only `laneway-key` member: the first existing member is
    replaced in place, any others are dropped, and the other members are kept in order. Without
    one the key goes first: SDKs that enforce the W3C limits (180 members, 8192 bytes) drop the
    members at the end."""
    member = baggage_value(key)
    kept: list[str] = []
    placed = False
    for item in (baggage or "").split(","):
        if _KEY_MEMBER_RE.match(item):
            if not placed:
                kept.append(member)
                placed = True
        elif item.strip(" \t"):
            kept.append(item.strip(" \t"))
    if not placed:
        kept.insert(0, member)
    return ",".join(kept)


def headers_with_key(headers: Mapping[str, str], key: str) -> dict[str, str]:
    """`headers` with one `baggage` header (whatever case it was sent in) carrying `key` by
    `with_key`: what `laneway request` and MCP `send_request` send."""
    out = {name: value for name, value in headers.items() if name.lower() != "baggage"}
    given = [value for name, value in headers.items() if name.lower() == "baggage"]
    out["baggage"] = with_key(",".join(given), key)
    return out


def baggage_value(routing_key: str) -> str:
    """The `baggage` header value that carries `routing_key`."""
    return f"{BAGGAGE_MEMBER}={routing_key}"
