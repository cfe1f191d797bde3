"""Captured exchanges (issue 13, item 3): what a request asked and what it was answered, kept with
its hop record for `laneway captures` and `laneway diff`.

Opt-in per service (`router.capture_services`), sampled (`capture_rate`), bodies cut at
`capture_body_bytes`. Credentials never leave the router as they came: `Authorization`,
`Proxy-Authorization`, `Cookie`, `Set-Cookie` and fields whose name says secret (token, key,
secret, password, session) are replaced by `redacted:` and the first 12 hex digits of their
SHA-256, a stable hash, so that a changed credential still shows as a difference. The record is
built once per exchange, when its hop is recorded; until then the router only appends body
pieces while there is room.
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any

__all__ = ["Capture", "redact"]

_SECRET_FIELDS = frozenset((b"authorization", b"proxy-authorization", b"cookie", b"set-cookie",
                            b"x-api-key", b"x-auth-token"))
_SECRET_NAME = re.compile(rb"token|secret|passw|api-?key|session", re.IGNORECASE)


def redact(name: bytes, value: bytes) -> str:
    lname = name.lower()
    if lname in _SECRET_FIELDS or _SECRET_NAME.search(lname):
        return "redacted:" + hashlib.sha256(value).hexdigest()[:12]
    return value.decode("latin-1")


class Capture:
    """One exchange being captured: the request's head and body, the response's."""

    __slots__ = ("grpc", "limit", "method", "request_body", "request_headers", "response_body",
                 "response_headers", "status", "target", "trailers", "truncated")

    def __init__(self, method: str, target: str, headers: list[tuple[bytes, bytes]],
                 limit: int) -> None:
        self.method = method
        self.target = target
        self.request_headers = headers
        self.limit = limit
        self.request_body = bytearray()
        self.response_body = bytearray()
        self.response_headers: list[tuple[bytes, bytes]] = []
        self.status = 0
        self.truncated = False
        self.trailers: list[tuple[bytes, bytes]] = []  # HTTP/2 response trailers (grpc-status)
        self.grpc = False  # a gRPC call (HTTP/2): listed and exported, not replayed

    def request_piece(self, data: bytes) -> None:
        self._add(self.request_body, data)

    def response_piece(self, data: bytes) -> None:
        self._add(self.response_body, data)

    def _add(self, into: bytearray, data: bytes) -> None:
        room = self.limit - len(into)
        if room <= 0:
            self.truncated = self.truncated or bool(data)
            return
        into += data[:room]
        if len(data) > room:
            self.truncated = True

    def finished(self, status: int) -> dict[str, Any]:
        """The record, once the exchange ended with `status` (the router's own answers have
        no response head here)."""
        if not self.status:
            self.status = status
        return self.to_json()

    def to_json(self) -> dict[str, Any]:
        return {
            # `laneway diff --capture ID` names one exchange by it; unique enough for the
            # bounded number kept (40 random bits).
            "id": "c" + os.urandom(5).hex(),
            "request": {"method": self.method, "target": self.target,
                        "headers": [[n.decode("latin-1").lower(), redact(n, v)]
                                    for n, v in self.request_headers],
                        "body": self.request_body.decode("latin-1")},
            "response": {"status": self.status,
                         "headers": [[n.decode("latin-1").lower(), redact(n, v)]
                                     for n, v in self.response_headers],
                         "body": self.response_body.decode("latin-1")},
            "truncated": self.truncated,
            **({"trailers": [[n.decode("latin-1").lower(), redact(n, v)]
                             for n, v in self.trailers]} if self.trailers else {}),
            **({"grpc": True} if self.grpc else {}),
        }
