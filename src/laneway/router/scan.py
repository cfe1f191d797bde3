"""The router's byte scans of the common case, in pure Python and compiled.

`scan_request` reads a whole plain request (what `ClientConnection._plain_request` forwards as
it came), `simple_response` a whole simple response (what `UpstreamConnection` forwards as it
came; `simple_answer` also makes the bytes the client is sent). They are pure functions of the
bytes read, and written with regular expressions they were most of the router's Python per
exchange (about 1.7 and 3.9 µs here, of about 12), so each has a C twin in `_scan.c`, built at
install where a C compiler exists. The functions here are the reference: the C ones must
return exactly what they return for every input (`tests/protocol/test_scan.py` compares them
on the corpus and on generated heads), and they are what runs where the extension is not
built, or with `LANEWAY_PURE_PYTHON=1`. The routing key's common cases are compiled too
(`quick_key`, 0.7 µs in Python), with `core.baggage.baggage_key` deciding the rest; and hop
rows are made untracked by the collector as they are recorded (`untrack`).

`COMPILED` says which ones the router uses; the benches print it beside their figures.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from laneway.core.baggage import baggage_key
from laneway.core.hops import HopRow

__all__ = ["COMPILED", "VIA", "py_scan_request", "py_simple_answer", "py_simple_response",
           "quick_key", "scan_request", "simple_answer", "simple_response", "untrack"]

VIA = b"via: 1.1 laneway\r\n"

# An HTTP/1.1 request in origin-form with a method llhttp knows, field lines that are a token,
# `:` and a value of what llhttp accepts there (HTAB, visible characters, spaces, obs-text: no
# CR, LF, NUL, DEL or other controls), up to 100 of them. Anything else goes to the parser,
# which accepts or refuses it as before: this is a subset of what it accepts.
_PLAIN_HEAD = re.compile(
    rb"(GET|HEAD|POST|PUT|DELETE|PATCH|OPTIONS) (/[!-~]*) HTTP/1\.1\r\n"
    rb"(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e\x80-\xff]*\r\n){1,100}\r\n")
# The fields a plain request is looked at for (the rest are forwarded untouched): what routes
# it, what frames it, and the hop-by-hop ones (which make it not plain, but the common
# `Connection: keep-alive`).
_PLAIN_FIELDS = re.compile(
    rb"(?i)\r\n(host|baggage|content-length|traceparent|tracestate|origin|connection|"
    rb"keep-alive|proxy-connection|te|transfer-encoding|upgrade|trailer|http2-settings):"
    rb"[ \t]*([^\r]*)")
# The keep-alive field lines both scans drop, each with the CRLF before it.
_KEEP_ALIVE_LINE = re.compile(
    rb"(?i)\r\n(?:connection:[ \t]*keep-alive[ \t]*|keep-alive:[\t\x20-\x7e\x80-\xff]*)"
    rb"(?=\r\n)")

# The response head that may be forwarded as it came: a final HTTP/1.1 response that has a
# body (2xx-5xx but 204 and 304), field lines as above, up to 100 of them.
_SIMPLE_HEAD = re.compile(
    rb"HTTP/1\.1 (?!204|304)([2-5][0-9][0-9])(?: [\t\x20-\x7e\x80-\xff]*)?\r\n"
    rb"(?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e\x80-\xff]*\r\n){1,100}\r\n")
# The fields a response head is looked at for: the framing, and the hop-by-hop ones (which make
# it not simple, but what most servers say on every keep-alive response, nginx and Node.js
# among them: `Connection: keep-alive` and `Keep-Alive`, dropped, nothing to act on).
_RESPONSE_FIELDS = re.compile(
    rb"(?i)\r\n(content-length|connection|keep-alive|proxy-connection|te|transfer-encoding|"
    rb"upgrade|trailer|http2-settings):[ \t]*([^\r]*)")

# What `scan_request` gives for a plain request.
PlainRequest = tuple[str, str, bytes, list[bytes], int, bytes, bytes, bool, bytes]


def py_scan_request(data: bytes, max_header_bytes: int) -> PlainRequest | None:
    """(method, target (its first 512 characters, as hop records keep it), Host, baggage values
    in order, Content-Length or -1, traceparent,
    tracestate, whether an Origin came, the bytes to forward) when `data` is one whole plain
    request: `_PLAIN_HEAD` within `max_header_bytes`, one Host, at most one Content-Length (of
    digits, at most 15) that the bytes after the head match, no hop-by-hop field but
    `Connection: keep-alive` and `Keep-Alive`. What is forwarded is the request as it came with
    those two dropped and `via` added. None for anything else (the parser's case). The Host is
    not checked here (the caller remembers the ones it checked)."""
    end = data.find(b"\r\n\r\n")
    if end < 0 or end >= max_header_bytes:
        return None
    match = _PLAIN_HEAD.fullmatch(data, 0, end + 4)
    if match is None:
        return None
    host = b""
    hosts = 0
    length = -1
    baggage: list[bytes] = []
    traceparent = tracestate = b""
    origin = keep_alive_fields = False
    for name, raw in _PLAIN_FIELDS.findall(data, 0, end + 2):
        lname = name.lower()
        value = raw.rstrip(b" \t")
        if lname == b"host":
            hosts += 1
            host = value
        elif lname == b"baggage":
            baggage.append(value)
        elif lname == b"content-length":
            if length >= 0 or not value.isdigit() or len(value) > 15:
                return None
            length = int(value)
        elif lname == b"traceparent":
            traceparent = value
        elif lname == b"tracestate":
            tracestate = value
        elif lname == b"origin":
            origin = True
        elif (lname == b"connection" and value.lower() == b"keep-alive") \
                or lname == b"keep-alive":
            keep_alive_fields = True
        else:
            return None  # hop-by-hop fields the parser's path acts on
    body = len(data) - end - 4
    if hosts != 1 or body != max(length, 0):
        return None  # no Host (400), or a body not all here, or a pipelined request
    head = data[:end + 2]
    if keep_alive_fields:
        head = _KEEP_ALIVE_LINE.sub(b"", head)
    method, target = match.group(1, 2)
    forward = head + VIA + b"\r\n" + data[end + 4:] if body else head + VIA + b"\r\n"
    return (method.decode(), target[:512].decode(), host, baggage, length, traceparent,
            tracestate, origin, forward)


def py_simple_response(data: bytes, max_header_bytes: int) -> tuple[int, int, bytes] | None:
    """(status, where the body starts, the head to forward) when `data` is one whole response
    whose head may be forwarded as it came: `_SIMPLE_HEAD`, no hop-by-hop field but
    `Connection: keep-alive` and `Keep-Alive` (dropped), and exactly one Content-Length that
    the bytes after the head match; None for anything else (the parser's case)."""
    end = data.find(b"\r\n\r\n")
    if end < 0 or end + 4 > max_header_bytes:
        return None
    match = _SIMPLE_HEAD.fullmatch(data, 0, end + 4)
    if match is None:
        return None
    length = b""
    keep_alive_fields = False
    for name, value in _RESPONSE_FIELDS.findall(data, 0, end + 2):
        lname = name.lower()
        if lname == b"content-length":
            if length:
                return None  # two of them: the parser's checks
            length = value.rstrip(b" \t") or b"-"
        elif lname == b"keep-alive" or (
                lname == b"connection" and value.rstrip(b" \t").lower() == b"keep-alive"):
            keep_alive_fields = True
        else:
            return None
    if not length.isdigit() or len(length) > 15 or int(length) != len(data) - end - 4:
        return None
    head = data[:end + 4]
    return int(match.group(1)), end + 4, (_KEEP_ALIVE_LINE.sub(b"", head)
                                          if keep_alive_fields else head)


def py_simple_answer(data: bytes, max_header_bytes: int,
                     served_by: bytes) -> tuple[int, bytes] | None:
    """(status, what the client is sent) for a simple response (`py_simple_response`): its head
    without the dropped fields, `laneway-served-by` when `served_by` is not empty, `via`, then
    its body."""
    found = py_simple_response(data, max_header_bytes)
    if found is None:
        return None
    status, body_at, head = found
    if served_by:
        return status, b"".join((head[:-2], b"laneway-served-by: ", served_by, b"\r\n", VIA,
                                 b"\r\n", data[body_at:]))
    return status, b"".join((head[:-2], VIA, b"\r\n", data[body_at:]))


scan_request: Callable[[bytes, int], PlainRequest | None] = py_scan_request
simple_response: Callable[[bytes, int], tuple[int, int, bytes] | None] = py_simple_response
simple_answer: Callable[[bytes, int, bytes], tuple[int, bytes] | None] = py_simple_answer
# `core.baggage.baggage_key`'s answer, or None where only it can tell (compiled: the common
# cases, no `laneway-key` or one plain member; in Python it is baggage_key itself).
quick_key: Callable[[bytes], tuple[str | None, bool] | None] = baggage_key
# Untracks a hop row of atomic values (`HopRecorder.record`); None in Python, where the collector
# untracks it at its first pass instead.
untrack: Callable[[HopRow], HopRow] | None = None
COMPILED = False
if os.environ.get("LANEWAY_PURE_PYTHON", "") in ("", "0"):
    try:
        from laneway.router._scan import baggage_key as _c_baggage_key
        from laneway.router._scan import scan_request as _c_scan_request
        from laneway.router._scan import simple_answer as _c_simple_answer
        from laneway.router._scan import simple_response as _c_simple_response
        from laneway.router._scan import untrack as _c_untrack
    except ImportError:  # not built here (no C compiler at install): the same, in Python
        pass
    else:
        scan_request = _c_scan_request
        simple_response = _c_simple_response
        simple_answer = _c_simple_answer
        quick_key = _c_baggage_key
        untrack = _c_untrack
        COMPILED = True
