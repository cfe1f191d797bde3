"""One request/response pair passing the router, and the two interfaces it joins.

`Exchange` is plain state. The client side (`client.ClientConnection`) and the upstream side
(`upstream.UpstreamConnection`) talk to each other only through it and through the two protocols
below, so neither module imports the other's class: `client` creates upstream connections, and
`upstream` calls back through `Downstream`.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from laneway.core.routes import Upstream
from laneway.router.capture import Capture

__all__ = ["PENDING_LIMIT", "BodySink", "Carrier", "Downstream", "Exchange"]

PENDING_LIMIT = 256 * 1024  # request body held while the upstream connection opens


class Carrier(Protocol):
    """The upstream connection an exchange is using (see `upstream.UpstreamConnection`)."""

    transport: asyncio.Transport | None
    closed: bool
    reused: bool
    last_activity: float

    def detach(self, reusable: bool) -> None: ...
    def close(self) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def skip_body(self) -> None: ...


class BodySink(Protocol):
    def body(self, data: bytes) -> None: ...
    def body_end(self) -> None: ...


class Downstream(Protocol):
    """The client connection an exchange belongs to (see `client.ClientConnection`)."""

    write_paused: bool
    corked: bool  # writes are gathered until `uncork`

    def uncork(self) -> None: ...

    def describe_upstream(self, ex: Exchange) -> str: ...
    def response_head(self, ex: Exchange, status: int, reason: bytes,
                      headers: list[tuple[bytes, bytes]]) -> None: ...
    def simple_served(self, ex: Exchange) -> bytes | None:
        """The `laneway-served-by` value (b"": none) when a whole response whose head needs
        nothing but laneway's own fields added may be sent as it came (`answer_simple`);
        None when it must go through the parser."""
    def answer_simple(self, ex: Exchange, status: int, answer: bytes) -> None:
        """Send that response (`scan.simple_answer` made it) and complete the exchange."""
    def response_body(self, ex: Exchange, body: bytes) -> None: ...
    def response_complete(self, ex: Exchange, reusable: bool) -> None: ...
    def upstream_lost(self, ex: Exchange, up: Carrier) -> None: ...
    def upstream_failed(self, ex: Exchange, status: int, code: str, message: str) -> None: ...
    def set_upstream_backpressure(self, paused: bool) -> None: ...
    def start_tunnel(self, ex: Exchange, up: Carrier, rest: bytes) -> None: ...
    def tunnel_closed(self) -> None: ...


class Exchange:
    """One request/response pair: what was asked, where it goes, how far it got."""

    __slots__ = (
        "body_length", "body_sink", "cancel_upgrade", "capture", "close_client",
        "close_delimited", "conn",
        "destination", "done", "error", "fork", "has_body", "head", "http11", "is_head",
        "keep_alive", "key", "key_conflict", "local", "local_status", "method", "parent_id",
        "path", "pending", "pending_size", "rechunk", "request_chunked", "request_done",
        "response_started", "retry_allowed", "served_by", "started", "status", "trace_id",
        "tunnel_data", "upgrade", "upstream", "upstream_conn",
    )

    def __init__(self, conn: Downstream) -> None:
        self.conn = conn
        self.head = b""
        self.pending: list[bytes] | None = []
        self.pending_size = 0
        self.upstream: Upstream | None = None
        self.upstream_conn: Carrier | None = None
        # Takes the request body unframed, instead of `send_body` (an HTTP/2 upstream stream)
        self.body_sink: BodySink | None = None
        self.capture: Capture | None = None  # the exchange kept for `laneway diff` (capture.py)
        self.local: bytes | None = None  # a response the router writes itself
        self.local_status = 503
        self.error = ""
        self.request_chunked = False
        self.has_body = False
        self.body_length = 0
        self.request_done = False
        self.response_started = False
        self.rechunk = False
        self.close_client = False
        self.close_delimited = False
        self.done = False
        self.keep_alive = True
        self.is_head = False
        self.http11 = True
        self.upgrade = False
        # An upgrade the router declines (h2c, or a request with a body): llhttp has already
        # switched to "upgraded" mode, so the rest of the stream is parsed again as HTTP/1.1.
        self.cancel_upgrade = False
        self.retry_allowed = True
        self.status = 0
        self.key = ""
        self.key_conflict = False
        self.destination = "baseline"
        self.fork = ""
        self.served_by = b""
        self.method = ""
        self.path = ""
        self.trace_id = ""
        self.parent_id = ""
        self.started = 0.0
        self.tunnel_data = b""

    def describe(self) -> str:
        return self.conn.describe_upstream(self)

    def send_body(self, framed: bytes, now: float) -> None:
        if self.done:
            return
        up = self.upstream_conn
        if up is not None and up.transport is not None:
            self.retry_allowed = False
            up.last_activity = now  # an upload in progress is progress (upstream_timeout)
            up.transport.write(framed)
        elif self.pending is not None:
            # No upstream connection yet (connecting): hold the body, but stop reading the
            # client once a window's worth is held (`UpstreamConnection.attach` resumes it).
            self.pending.append(framed)
            self.pending_size += len(framed)
            if self.pending_size > PENDING_LIMIT:
                self.conn.set_upstream_backpressure(True)
