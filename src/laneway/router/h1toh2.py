"""An HTTP/1.1 request to a service whose processes speak HTTP/2 only (`protocol: h2c`): one
stream on a pooled `H2Upstream`, standing in for the upstream connection the client side
expects (`exchange.Carrier`).

The client side keeps doing what it does for HTTP/1.1 upstreams (framing the response for its
client, timeouts, pipelining order); this bridge turns the request head it built back into
HTTP/2 fields, passes the body on within the stream's window (pausing the client's reading
while it is full), and hands the response's head and data to the client side. Trailers are not
sent to HTTP/1.1 clients (the client side re-chunks without them); a gRPC call always arrives
over HTTP/2 and never comes here.
"""

from __future__ import annotations

import contextlib
from collections import deque
from typing import TYPE_CHECKING

from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError

from laneway.router.exchange import Exchange
from laneway.router.h2upstream import STREAM_WINDOW, H2Upstream, take
from laneway.router.timeouts import Clock

if TYPE_CHECKING:
    import asyncio

__all__ = ["H1ToH2"]

Headers = list[tuple[bytes, bytes]]
_DROP = frozenset((b"host", b"transfer-encoding", b"connection", b"keep-alive", b"te",
                   b"upgrade", b"proxy-connection"))


def h2_request(head: bytes) -> Headers:
    """The fields of an HTTP/2 request from the head the client side built for HTTP/1.1."""
    lines = head.split(b"\r\n")
    method, _, rest = lines[0].partition(b" ")
    target = rest.rpartition(b" ")[0]
    fields: Headers = []
    authority = b""
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(b":")
        lname = name.strip().lower()
        value = value.strip()
        if lname == b"host":
            authority = value
        elif lname not in _DROP:
            fields.append((lname, value))
    return [(b":method", method), (b":scheme", b"http"), (b":authority", authority),
            (b":path", target or b"/"), *fields]


class H1ToH2:
    """One HTTP/1.1 exchange carried by one HTTP/2 stream (`Carrier` to the client side,
    `Waiter` and `StreamPeer` to the HTTP/2 connection)."""

    transport: asyncio.Transport | None = None  # bodies go through `body` instead
    reused = False

    def __init__(self, ex: Exchange, clock: Clock) -> None:
        self.ex = ex
        self.clock = clock
        self.closed = False
        self.last_activity = clock.now
        self.up: H2Upstream | None = None
        self.sid = 0
        self.paused = False  # the client does not read: data stays unacknowledged
        self.held = 0  # bytes received and passed on but not acknowledged (while paused)
        self.body_queue: deque[bytes] = deque()
        self.body_queued = 0
        self.body_ended = False
        self.sent_end = False
        self.skip = False
        self.responded = False
        ex.upstream_conn = self
        ex.body_sink = self

    # from the client side (the request body)

    def body(self, data: bytes) -> None:
        if data:
            self.body_queue.append(data)
            self.body_queued += len(data)
        self._pump()

    def body_end(self) -> None:
        self.body_ended = True
        self._pump()

    def _pump(self) -> None:
        up = self.up
        if up is None or self.sent_end or self.closed:
            if self.body_queued > STREAM_WINDOW:
                self.ex.conn.set_upstream_backpressure(True)
            return
        queue = self.body_queue
        try:
            while queue:
                window = up.send_window(self.sid)
                if window <= 0:
                    break
                chunk = take(queue, window)
                self.body_queued -= len(chunk)
                up.send_data(self.sid, chunk)
            if not queue and self.body_ended:
                up.end_stream(self.sid)
                self.sent_end = True
        except ProtocolError:
            return  # the stream was reset meanwhile: the response side says how
        up.flush()
        self.ex.conn.set_upstream_backpressure(self.body_queued > STREAM_WINDOW)

    # Waiter

    def up_connected(self, conn: H2Upstream) -> None:
        ex = self.ex
        if ex.done or self.closed:
            return
        self.up = conn
        end = ex.request_done and not self.body_queue
        try:
            self.sid = conn.open_stream(self, h2_request(ex.head), end_stream=end)
        except ProtocolError as exc:
            self.up = None
            ex.conn.upstream_failed(ex, 502, "upstream_bad_request",
                                    f"cannot open a stream to {ex.describe()}: {exc}")
            return
        self.sent_end = end
        self._pump()

    def up_connect_failed(self, status: int, code: str, message: str) -> None:
        self.closed = True
        self.ex.conn.upstream_failed(self.ex, status, code, f"{self.ex.describe()} {message}")

    # StreamPeer

    def up_headers(self, headers: Headers, ended: bool) -> None:
        ex = self.ex
        status = 200
        fields: Headers = []
        for name, value in headers:
            if name == b":status":
                status = int(value)
            elif name[:1] != b":":
                fields.append((name, value))
        self.last_activity = self.clock.now
        ex.conn.corked = True
        try:
            ex.conn.response_head(ex, status, b"", fields)
            if ended:
                self._complete()
        finally:
            ex.conn.uncork()

    def up_informational(self, headers: Headers) -> None:
        pass  # the client side answers interim responses itself where it must

    def up_data(self, data: bytes, flow_length: int) -> None:
        up = self.up
        self.last_activity = self.clock.now
        if flow_length > len(data) and up is not None:
            up.ack(flow_length - len(data), self.sid)
        if self.skip or self.ex.done or not data:
            if up is not None and data:
                up.ack(len(data), self.sid)
            return  # (an empty DATA frame, END_STREAM's carrier, would be a last chunk)
        self.ex.conn.response_body(self.ex, data)
        if up is not None:
            if self.paused:
                self.held += len(data)
            else:
                up.ack(len(data), self.sid)
                up.flush()

    def up_trailers(self, headers: Headers) -> None:
        pass  # HTTP/1.1 clients get the body; trailers are HTTP/2's (and gRPC's)

    def up_end(self) -> None:
        self._complete()

    def _complete(self) -> None:
        if not self.responded:
            self.responded = True
            self.ex.conn.response_complete(self.ex, reusable=True)

    def up_reset(self, code: int) -> None:
        self._gone("upstream_reset", f"reset the stream (HTTP/2 error {code})")

    def up_lost(self, message: str, refused: bool) -> None:
        self._gone("upstream_closed", message)

    def _gone(self, code: str, what: str) -> None:
        """The stream ended without its response: cut short once it began, a 502 before."""
        self.up = None
        if self.responded:
            return
        self.closed = True
        if self.ex.response_started:
            self.ex.conn.upstream_lost(self.ex, self)
            return
        self.ex.conn.upstream_failed(self.ex, 502, code, f"{self.ex.describe()} {what}")

    def up_window(self) -> None:
        self._pump()

    # Carrier (asked by the client side)

    def detach(self, reusable: bool) -> None:
        """The exchange is over: a stream still open is cancelled; the connection stays."""
        self.closed = True
        up, self.up = self.up, None
        if up is not None and not self.responded:
            up.reset(self.sid, ErrorCodes.CANCEL)
        elif up is not None:
            if not self.sent_end:
                with contextlib.suppress(ProtocolError):
                    up.reset(self.sid, ErrorCodes.NO_ERROR)
            up.release(self.sid)

    def close(self) -> None:
        self.detach(reusable=False)

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        if self.held and self.up is not None:
            held, self.held = self.held, 0
            self.up.ack(held, self.sid)
            self.up.flush()

    def skip_body(self) -> None:
        self.skip = True
