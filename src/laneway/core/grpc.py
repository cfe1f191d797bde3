"""gRPC facts the router, the health check and the reports share: status names and the
`grpc-timeout` header (grpc/doc/statuscodes.md, grpc/doc/PROTOCOL-HTTP2.md)."""

from __future__ import annotations

import re

__all__ = ["GRPC_CODES", "format_grpc_timeout", "grpc_code_name", "parse_grpc_timeout"]

GRPC_CODES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
    "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
    "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
    "UNAUTHENTICATED",
)

_TIMEOUT = re.compile(rb"^(\d{1,8})([HMSmun])$")
_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def grpc_code_name(code: int, unknown: str | None = None) -> str:
    """`UNAVAILABLE` for 14; for a code gRPC does not define, `unknown` (default: the number)."""
    if 0 <= code < len(GRPC_CODES):
        return GRPC_CODES[code]
    return str(code) if unknown is None else unknown


def parse_grpc_timeout(value: bytes) -> float | None:
    """`grpc-timeout` in seconds (`100m`, `5S`), None when it is not one."""
    match = _TIMEOUT.match(value.strip())
    if match is None:
        return None
    return int(match.group(1)) * _UNITS[match.group(2)]


def format_grpc_timeout(seconds: float) -> bytes:
    """The most precise `grpc-timeout` that fits in 8 digits."""
    seconds = max(seconds, 0.0)
    for unit, scale in ((b"u", 1e-6), (b"m", 1e-3), (b"S", 1.0), (b"M", 60.0), (b"H", 3600.0)):
        count = int(seconds / scale)
        if count <= 99_999_999:
            return b"%d%s" % (max(count, 1 if seconds > 0 else 0), unit)
    return b"99999999H"
