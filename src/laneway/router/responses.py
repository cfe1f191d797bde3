"""Responses the router writes itself (400, 405, 408, 431, 501, 502, 503, 504, 505), each saying
which service, sandbox or fork is at fault and why, as JSON so that test tooling can read it."""

from __future__ import annotations

import json

__all__ = ["connect_failure", "error_response"]

_REASONS = {
    400: b"Bad Request",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}


def error_response(status: int, code: str, message: str, *, served_by: bytes = b"",
                   close: bool = False, extra: dict[str, str] | None = None) -> bytes:
    body = json.dumps({"error": code, "message": message, **(extra or {})}).encode() + b"\n"
    lines = [
        b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Error")),
        b"content-type: application/json\r\n",
        b"content-length: %d\r\n" % len(body),
        b"laneway-error: " + code.encode() + b"\r\n",
    ]
    if served_by:
        lines.append(b"laneway-served-by: " + served_by + b"\r\n")
    if close:
        lines.append(b"connection: close\r\n")
    lines.append(b"\r\n")
    return b"".join(lines) + body


def connect_failure(exc: BaseException, host: str, port: int,
                    timeout: float) -> tuple[int, str, str]:
    """Why a connection to an upstream could not be opened: (status, code, the message after
    the upstream's description), the same for HTTP/1.1 and HTTP/2 upstreams."""
    if isinstance(exc, TimeoutError):
        return (504, "upstream_connect_timeout",
                f"at {host}:{port} did not accept a connection within {timeout:g}s")
    reason = getattr(exc, "strerror", None) or exc
    return (502, "upstream_refused",
            f"at {host}:{port} refused the connection ({reason}); is its process running? "
            "see `laneway status`")

