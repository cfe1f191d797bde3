"""The router's hot path: one asyncio Protocol per client connection.

`httptools` finds message boundaries and the few headers that matter; the request head is
re-serialised once (hop-by-hop headers dropped, as RFC 9110 §7.6.1 says), bodies are forwarded as
they arrive. The routing decision is one dict hit on the service's routes (`core.routes.decide`).
Backpressure uses pause_reading/resume_reading; there is no task per request, only a connect task
when no pooled upstream connection is idle.

We write this ourselves rather than using an HTTP framework because it is the product's hot path
(see PERFORMANCE.md): frameworks parse, decode and re-encode every header and body.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, cast

import httptools

from laneway.core.baggage import key_from_baggage, key_from_tracestate
from laneway.core.hops import Hop, trace_context
from laneway.core.routes import ForkRoute, Upstream, decide
from laneway.router.responses import error_response
from laneway.router.upstream import UpstreamConnection, UpstreamPool

if TYPE_CHECKING:
    from laneway.router.hops import HopRecorder

__all__ = ["ClientConnection", "Exchange", "ServiceContext"]

# RFC 9110 §7.6.1: connection-specific fields a proxy must not forward. `trailer` goes too,
# because re-chunked bodies are forwarded without their trailer section.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"transfer-encoding",
    b"upgrade", b"trailer",
})
_STANDARD_CONNECTION_TOKENS = frozenset({b"close", b"keep-alive", b"upgrade"})
VIA = b"via: 1.1 laneway\r\n"
# Hops carry wall-clock start times; one monotonic read per request, shifted once to the epoch.
WALL_OFFSET = time.time() - time.monotonic()


class ServiceContext:
    """What every connection of one service's listener shares."""

    __slots__ = (
        "baseline",
        "connect_tasks",
        "connect_timeout",
        "connections",
        "extra_headers",
        "max_header_bytes",
        "name",
        "name_b",
        "pool",
        "recorder",
        "routes",
        "served_by",
        "upstream_timeout",
    )

    def __init__(self, name: str, recorder: HopRecorder, pool: UpstreamPool, *,
                 extra_headers: frozenset[bytes], connect_timeout: float,
                 upstream_timeout: float, max_header_bytes: int) -> None:
        self.name = name
        self.name_b = name.encode()
        self.routes: dict[str, ForkRoute] = {}
        self.baseline: Upstream | None = None
        self.recorder = recorder
        self.pool = pool
        self.extra_headers = extra_headers
        self.connect_timeout = connect_timeout
        self.upstream_timeout = upstream_timeout
        self.max_header_bytes = max_header_bytes
        self.connections: set[ClientConnection] = set()
        self.connect_tasks: set[asyncio.Task[None]] = set()
        self.served_by: dict[str, bytes] = {}  # sandbox -> b"service@sandbox", built once


class Exchange:
    """One request/response pair passing this router."""

    __slots__ = (
        "close_client", "close_delimited", "conn", "destination", "done", "error", "fork",
        "has_body", "head", "http11", "is_head",
        "keep_alive", "key", "local", "method", "parent_id", "path", "pending", "rechunk",
        "request_chunked", "request_done", "response_started", "retry_allowed", "served_by",
        "started", "status", "trace_id", "tunnel_data", "upgrade",
        "upstream", "upstream_conn",
    )

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.head = b""
        self.pending: list[bytes] | None = []
        self.upstream: Upstream | None = None
        self.upstream_conn: UpstreamConnection | None = None
        self.local: bytes | None = None
        self.error = ""
        self.request_chunked = False
        self.has_body = False
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
        self.retry_allowed = True
        self.status = 0
        self.key = ""
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
        if self.destination == "baseline":
            return f"baseline service {self.conn.ctx.name}"
        return f"fork {self.conn.ctx.name}@{self.destination}"

    def send_body(self, framed: bytes) -> None:
        if self.done:
            return
        up = self.upstream_conn
        if up is not None and up.transport is not None:
            self.retry_allowed = False
            up.transport.write(framed)
        elif self.pending is not None:
            self.pending.append(framed)


class ClientConnection(asyncio.Protocol):
    """A downstream connection: parses requests, routes each, streams responses back."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.closed = False
        self.active: Exchange | None = None
        self.parsing: Exchange | None = None
        self.queue: deque[Exchange] = deque()
        self.tunnel: UpstreamConnection | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._head_size = 0
        self._in_head = False
        self._too_large = False
        self._paused_by_upstream = False
        self._paused_by_queue = False
        self._paused_for_upgrade = False
        self._reading_paused = False
        self._write_paused = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement its interface.
        self.transport = cast(asyncio.Transport, transport)
        self.ctx.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            if self.tunnel.transport is not None:
                self.tunnel.transport.write(data)
            return
        if self.closed:
            return
        if self.parsing is not None and self.parsing.upgrade:
            # Bytes after an upgrade request, before the upstream's 101: hold them.
            self.parsing.tunnel_data += data
            return
        # Raw bytes since the current head began: catches one huge header that httptools is
        # still accumulating (on_header only fires once a field is complete).
        self._head_bytes = self._head_bytes + len(data) if self._in_head else len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = int(exc.args[0]) if exc.args else len(data)
            if self.parsing is not None:
                self.parsing.tunnel_data = data[offset:]
            self._paused_for_upgrade = True
            self._sync_reading()
            return
        except httptools.HttpParserCallbackError:
            if self._too_large:
                self._reject(431, "header_too_large", self._too_large_message())
                return
            raise
        except httptools.HttpParserError as exc:
            self._reject(400, "bad_request", f"malformed HTTP request: {exc}")
            return
        if self._in_head and self._head_bytes > self.ctx.max_header_bytes + 65536:
            self._reject(431, "header_too_large", self._too_large_message())

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.ctx.connections.discard(self)
        if self.tunnel is not None:
            tunnel, self.tunnel = self.tunnel, None
            tunnel.tunnel = None
            tunnel.close()
        for ex in [self.active, *self.queue]:
            if ex is not None and not ex.done:
                # 499: the client went away before the response was complete (nginx's code).
                self._finish(ex, ex.status if ex.response_started else 499, reusable=False)
        self.queue.clear()

    def pause_writing(self) -> None:
        self._write_paused = True
        up = self.active.upstream_conn if self.active else None
        if up is not None and up.transport is not None:
            up.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        up = self.active.upstream_conn if self.active else None
        if up is not None and up.transport is not None and not up.closed:
            up.transport.resume_reading()

    # httptools callbacks (requests)

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._in_head = True
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._head_size += len(name) + len(value) + 4
        if len(self._headers) > 200 or self._head_size > self.ctx.max_header_bytes:
            self._too_large = True
            raise ValueError("header section too large")

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        ex = Exchange(self)
        ex.started = time.monotonic()
        method = self.parser.get_method()
        ex.method = method.decode("ascii", "replace")
        ex.is_head = method == b"HEAD"
        ex.keep_alive = self.parser.should_keep_alive()
        ex.http11 = self.parser.get_http_version() == "1.1"
        ex.upgrade = self.parser.should_upgrade()
        url = self._url
        ex.path = url[:512].decode("latin-1")
        self._build(ex, method, url)
        self.parsing = ex
        if self.active is None:
            self._start(ex)
        else:
            self.queue.append(ex)
            self._paused_by_queue = True
            self._sync_reading()

    def on_body(self, body: bytes) -> None:
        ex = self.parsing
        if ex is None or ex.local is not None:
            return
        if ex.request_chunked:
            ex.send_body(b"%x\r\n%b\r\n" % (len(body), body))
        else:
            ex.send_body(body)

    def on_message_complete(self) -> None:
        ex = self.parsing
        if ex is None:
            return
        ex.request_done = True
        if ex.request_chunked and ex.local is None:
            ex.send_body(b"0\r\n\r\n")
        if not ex.upgrade:
            self.parsing = None

    # request side

    def _build(self, ex: Exchange, method: bytes, url: bytes) -> None:
        ctx = self.ctx
        lines: list[bytes] = [method, b" ", url, b" HTTP/1.1\r\n"]
        baggage: list[bytes] = []
        tracestate = b""
        traceparent = b""
        extra_key = b""
        connection_tokens: list[bytes] = []
        upgrade_value = b""
        for name, value in self._headers:
            lname = name.lower()
            if lname in HOP_BY_HOP:
                if lname == b"transfer-encoding":
                    ex.request_chunked = True
                    ex.has_body = True
                elif lname == b"connection":
                    connection_tokens.extend(
                        t.strip().lower() for t in value.split(b",") if t.strip()
                    )
                elif lname == b"upgrade":
                    upgrade_value = value
                continue
            if lname == b"baggage":
                baggage.append(value)
            elif lname == b"content-length":
                ex.has_body = value.strip() not in (b"0", b"")
            elif lname == b"traceparent":
                traceparent = value
            elif lname == b"tracestate":
                tracestate = value
            elif ctx.extra_headers and lname in ctx.extra_headers and not extra_key:
                extra_key = value.strip()
            lines.append(name)
            lines.append(b": ")
            lines.append(value)
            lines.append(b"\r\n")
        extra_tokens = [t for t in connection_tokens if t not in _STANDARD_CONNECTION_TOKENS]
        if extra_tokens:
            lines = _drop_named(lines, frozenset(extra_tokens))
        if ex.request_chunked:
            lines.append(b"transfer-encoding: chunked\r\n")
        if ex.upgrade and upgrade_value:
            lines.append(b"connection: upgrade\r\nupgrade: " + upgrade_value + b"\r\n")
        lines.append(VIA)
        lines.append(b"\r\n")
        ex.head = b"".join(lines)
        if traceparent:
            ex.trace_id, ex.parent_id = trace_context(traceparent)

        key = None
        if baggage:
            key = key_from_baggage(baggage[0] if len(baggage) == 1 else b",".join(baggage))
        if key is None and tracestate:
            key = key_from_tracestate(tracestate)
        if key is None and extra_key:
            key = extra_key.decode("utf-8", "replace")
        route = decide(ctx.routes, key)
        if key is not None:
            ex.key = key
        if route is None:
            ex.upstream = ctx.baseline
            ex.served_by = ctx.name_b
            if ex.upstream is None:
                ex.error = (f"baseline service {ctx.name} has no running process yet "
                            "(starting, or its command failed); see `laneway status`")
                ex.local = error_response(503, "baseline_not_ready", ex.error,
                                          served_by=ctx.name_b, close=ex.has_body,
                                          extra={"service": ctx.name})
            return
        ex.destination = route.sandbox
        ex.fork = route.fork
        served = ctx.served_by.get(route.sandbox)
        if served is None:
            served = ctx.served_by[route.sandbox] = route.served_by.encode()
        ex.served_by = served
        if route.ready and route.upstream is not None:
            ex.upstream = route.upstream
            return
        ex.error = route.reason
        # A request with a body we will not read ends its connection; one without keeps it.
        ex.local = error_response(
            503, "fork_not_ready", route.reason, served_by=ex.served_by, close=ex.has_body,
            extra={"service": ctx.name, "sandbox": route.sandbox, "fork": route.fork,
                   "routing_key": key or ""},
        )

    def _start(self, ex: Exchange) -> None:
        self.active = ex
        if ex.local is not None:
            self._respond_locally(ex, ex.local, 503)
            return
        upstream = ex.upstream
        assert upstream is not None
        conn = self.ctx.pool.take(upstream)
        if conn is not None:
            conn.attach(ex)  # timeouts: `Router._sweep` checks every busy upstream connection
            return
        self._connect(ex, upstream)

    def _connect(self, ex: Exchange, upstream: Upstream) -> None:
        task = asyncio.get_running_loop().create_task(
            self._open_upstream(ex, upstream), name=f"laneway-connect-{self.ctx.name}"
        )
        self.ctx.connect_tasks.add(task)
        task.add_done_callback(self.ctx.connect_tasks.discard)

    async def _open_upstream(self, ex: Exchange, upstream: Upstream) -> None:
        loop = asyncio.get_running_loop()
        pool = self.ctx.pool
        # A request waiting for its connection is in flight too (`UpstreamPool.busy`).
        pool.connecting[upstream] = pool.connecting.get(upstream, 0) + 1
        try:
            await self._open_and_attach(ex, upstream, loop, pool)
        finally:
            left = pool.connecting[upstream] - 1
            if left:
                pool.connecting[upstream] = left
            else:
                del pool.connecting[upstream]

    async def _open_and_attach(self, ex: Exchange, upstream: Upstream,
                               loop: asyncio.AbstractEventLoop, pool: UpstreamPool) -> None:
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: UpstreamConnection(pool, upstream),
                                       upstream.host, upstream.port),
                self.ctx.connect_timeout,
            )
        except TimeoutError:
            self.upstream_failed(ex, 504, "upstream_connect_timeout",
                                 f"{ex.describe()} at {upstream.host}:{upstream.port} did not "
                                 f"accept a connection within {self.ctx.connect_timeout:g}s")
            return
        except OSError as exc:
            self.upstream_failed(ex, 502, "upstream_refused",
                                 f"{ex.describe()} at {upstream.host}:{upstream.port} refused "
                                 f"the connection ({exc.strerror or exc}); is its process "
                                 "running? see `laneway status`")
            return
        if ex.done or self.closed:
            conn.detach(reusable=not self.closed)
            return
        conn.attach(ex)

    def check_timeout(self, ex: Exchange, now: float) -> None:
        up = ex.upstream_conn
        if ex.done or up is None or now - up.last_activity < self.ctx.upstream_timeout:
            return
        up.exchange = None
        up.close()
        self.upstream_failed(ex, 504, "upstream_timeout",
                             f"{ex.describe()} did not answer within "
                             f"{self.ctx.upstream_timeout:g}s")

    # response side (called by UpstreamConnection)

    def response_head(self, ex: Exchange, status: int, reason: bytes,
                      headers: list[tuple[bytes, bytes]]) -> None:
        if ex.done:
            return
        informational = 100 <= status < 200 and status != 101
        lines: list[bytes] = [b"HTTP/1.1 %d %s\r\n" % (status, reason or b"")]
        chunked = False
        has_length = False
        for name, value in headers:
            lname = name.lower()
            if lname in HOP_BY_HOP:
                if lname == b"transfer-encoding":
                    chunked = True
                elif status == 101 and lname in (b"upgrade", b"connection"):
                    lines.append(name + b": " + value + b"\r\n")
                continue
            if lname == b"content-length":
                has_length = True
            lines.append(name)
            lines.append(b": ")
            lines.append(value)
            lines.append(b"\r\n")
        lines.append(b"laneway-served-by: " + ex.served_by + b"\r\n")
        lines.append(VIA)
        if not informational:
            ex.status = status
            ex.response_started = True
            no_body = ex.is_head or status in (101, 204, 304)
            if not no_body and not has_length:
                if ex.http11:
                    ex.rechunk = True
                    lines.append(b"transfer-encoding: chunked\r\n")
                else:
                    ex.close_client = True  # HTTP/1.0 client: the body ends when we close
            if not chunked and not has_length and not no_body:
                ex.close_delimited = True
            if (not ex.keep_alive or ex.close_client or (ex.upgrade and status != 101)) \
                    and status != 101:
                ex.close_client = True
                lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        self.write(b"".join(lines))
        if not informational and ex.is_head and ex.upstream_conn is not None:
            # No body follows a HEAD response, whatever its content-length says.
            ex.upstream_conn.completed = True

    def response_body(self, ex: Exchange, body: bytes) -> None:
        if ex.done:
            return
        if ex.rechunk:
            self.write(b"%x\r\n%b\r\n" % (len(body), body))
        else:
            self.write(body)

    def response_complete(self, ex: Exchange, up: UpstreamConnection,
                          reusable: bool | None = None) -> None:
        if ex.done:
            return
        if not ex.response_started:
            return  # the end of a 1xx interim response; the final one follows
        if ex.rechunk:
            self.write(b"0\r\n\r\n")
        if reusable is None:
            reusable = up.keep_alive
        self._finish(ex, ex.status, reusable=reusable and ex.request_done)

    def upstream_lost(self, ex: Exchange, up: UpstreamConnection) -> None:
        """The upstream closed while `ex` was using it."""
        if ex.done:
            return
        if ex.response_started:
            if ex.close_delimited:
                # A close-delimited body ends here; any other response was cut short.
                self.response_complete(ex, up, reusable=False)
                return
            self._finish(ex, ex.status, reusable=False)
            self.close()
            return
        if up.reused and ex.retry_allowed and ex.request_done:
            # A pooled keep-alive connection the upstream had just closed: try a fresh one once.
            ex.retry_allowed = False
            ex.upstream_conn = None
            ex.pending = []
            assert ex.upstream is not None
            self._connect(ex, ex.upstream)
            return
        self.upstream_failed(ex, 502, "upstream_closed",
                             f"{ex.describe()} closed the connection without answering "
                             "(did the process crash? `laneway status` says; `laneway "
                             "sandbox logs` shows a fork's output)")

    def upstream_failed(self, ex: Exchange, status: int, code: str, message: str) -> None:
        if ex.done:
            return
        if ex.response_started:
            self._finish(ex, ex.status, reusable=False)
            self.close()
            return
        ex.error = message
        extra = {"service": self.ctx.name}
        if ex.destination != "baseline":
            extra["sandbox"] = ex.destination
            extra["fork"] = ex.fork
        unread = ex.has_body and not ex.request_done
        body = error_response(status, code, message, served_by=ex.served_by, close=unread,
                              extra=extra)
        if unread:
            ex.close_client = True
        self._respond_locally(ex, body, status)

    def set_upstream_backpressure(self, paused: bool) -> None:
        self._paused_by_upstream = paused
        self._sync_reading()

    # tunnels (Upgrade, e.g. WebSocket)

    def start_tunnel(self, ex: Exchange, up: UpstreamConnection, rest: bytes) -> None:
        """The upstream answered 101: from now on both sides are raw byte streams."""
        self.tunnel = up
        up.tunnel = self
        up.exchange = None
        if ex.tunnel_data and up.transport is not None:
            up.transport.write(ex.tunnel_data)
        if rest:
            self.write(rest)
        self._record(ex, 101)
        ex.done = True
        self.active = None
        self.parsing = None
        self._paused_for_upgrade = False
        self._sync_reading()

    # bookkeeping

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _respond_locally(self, ex: Exchange, body: bytes, status: int) -> None:
        self.write(body)
        if ex.has_body and not ex.request_done:
            ex.close_client = True  # its body is not read: the connection cannot be reused
        self._finish(ex, status, reusable=False)

    def _finish(self, ex: Exchange, status: int, reusable: bool) -> None:
        ex.done = True
        up = ex.upstream_conn
        if up is not None:
            ex.upstream_conn = None
            if up.exchange is ex:
                up.detach(reusable)
        self._record(ex, status)
        if self.active is ex:
            self.active = None
        if self.closed:
            return
        if ex.close_client or not ex.keep_alive or (ex.upgrade and status != 101):
            self.queue.clear()
            self.close()
            return
        if self.queue:
            nxt = self.queue.popleft()
            if not self.queue:
                self._paused_by_queue = False
                self._sync_reading()
            self._start(nxt)
        elif self._paused_by_queue:
            self._paused_by_queue = False
            self._sync_reading()

    def _record(self, ex: Exchange, status: int) -> None:
        self.ctx.recorder.record(Hop(
            at=ex.started + WALL_OFFSET,
            trace_id=ex.trace_id,
            parent_id=ex.parent_id,
            service=self.ctx.name,
            routing_key=ex.key,
            destination=ex.destination,
            fork=ex.fork,
            status=status,
            duration_ms=(time.monotonic() - ex.started) * 1000.0,
            method=ex.method,
            path=ex.path,
            error=ex.error,
        ))

    def _reject(self, status: int, code: str, message: str) -> None:
        self.write(error_response(status, code, message, close=True))
        self.closed = True
        self.close()

    def _too_large_message(self) -> str:
        return (f"the request's header section is larger than "
                f"{self.ctx.max_header_bytes} bytes (or has more than 200 fields)")

    def _sync_reading(self) -> None:
        if self.transport is None or self.closed:
            return
        paused = self._paused_by_upstream or self._paused_by_queue or self._paused_for_upgrade
        if paused and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        elif not paused and self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()


def _drop_named(lines: list[bytes], names: frozenset[bytes]) -> list[bytes]:
    """Remove header lines named by `Connection` (RFC 9110 §7.6.1); lines come in 4-tuples."""
    out = lines[:4]
    for i in range(4, len(lines), 4):
        if lines[i].lower() not in names:
            out.extend(lines[i:i + 4])
    return out
