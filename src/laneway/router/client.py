"""The router's hot path: one asyncio Protocol per client connection.

`httptools` finds message boundaries and the few headers that matter; the request head is
re-serialised once (hop-by-hop headers dropped, `headers.py` says which and why), bodies are
forwarded as they arrive. The routing decision is one dict hit on the service's routes
(`core.routes.decide`). Backpressure uses pause_reading/resume_reading both ways; there is no
task per request, only a connect task when no pooled upstream connection is idle. Timeouts are
checked by a sweep (`timeouts.py`), limits at accept (`limits.py`), tunnels in `tunnel.py`.

What the client side guarantees:
- the upstream receives only complete, well-framed requests the client sent, in order; a
  request whose framing cannot be forwarded exactly is answered `400`/`501` and nothing of it
  is forwarded;
- responses go back in request order, each to the connection that asked (one exchange at a
  time per upstream connection);
- every buffer is bounded: reading the client pauses while a request waits (pipelining), while
  the upstream does not read, and while an upgrade waits for its `101`; reading the upstream
  pauses while the client does not read.

We write this ourselves rather than using an HTTP framework because it is the product's hot path
(see PERFORMANCE.md): frameworks parse, decode and re-encode every header and body.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, cast

import httptools

from laneway.core.baggage import baggage_key, key_from_tracestate, with_key
from laneway.core.hops import trace_context
from laneway.core.preview import key_of_origin
from laneway.core.routes import ForkRoute, Upstream
from laneway.router.callers import EXTERNAL, CallerResolver
from laneway.router.capture import Capture
from laneway.router.exchange import Carrier, Exchange
from laneway.router.h1toh2 import H1ToH2
from laneway.router.h2upstream import H2Pool
from laneway.router.headers import (
    HOP_BY_HOP,
    PREFACE,
    absolute_target,
    drop_named,
    is_host,
    is_token,
    tokens,
)
from laneway.router.limits import ConnectionBudget
from laneway.router.pool import UpstreamPool
from laneway.router.responses import connect_failure, error_response
from laneway.router.scan import VIA, quick_key, scan_request
from laneway.router.timeouts import Clock, Served
from laneway.router.tunnel import Tunnel
from laneway.router.upstream import UpstreamConnection

if TYPE_CHECKING:
    from laneway.router.hops import HopRecorder

__all__ = ["ClientConnection", "ServiceContext"]

# Hops carry wall-clock start times; one monotonic read per request, shifted once to the epoch.
WALL_OFFSET = time.time() - time.monotonic()
MAX_HEADER_FIELDS = 200
MAX_METHOD = 64


class ServiceContext:
    """What every connection of one service's listener shares."""

    __slots__ = (
        "baseline",
        "budget",
        "callers",
        "capture_body_bytes",
        "capture_rate",
        "captured",
        "client_timeout",
        "clock",
        "connect_tasks",
        "connect_timeout",
        "connections",
        "extra_headers",
        "h2_factory",
        "h2pool",
        "hosts",
        "keepalive_timeout",
        "max_connections",
        "max_header_bytes",
        "max_response_header_bytes",
        "name",
        "name_b",
        "names",
        "pool",
        "preview_port",
        "protocol",
        "recorder",
        "request_head_timeout",
        "routes",
        "served_by",
        "tunnel_timeout",
        "upstream_timeout",
    )

    def __init__(self, name: str, recorder: HopRecorder, pool: UpstreamPool[UpstreamConnection],
                 *, clock: Clock, budget: ConnectionBudget, extra_headers: frozenset[bytes],
                 connect_timeout: float, upstream_timeout: float, request_head_timeout: float,
                 keepalive_timeout: float, client_timeout: float, tunnel_timeout: float,
                 max_connections: int, max_header_bytes: int,
                 max_response_header_bytes: int, protocol: str = "http") -> None:
        self.name = name
        self.protocol = protocol  # how upstreams are reached: "http", "h2c" or "grpc"
        self.name_b = name.encode()
        self.routes: dict[str, ForkRoute] = {}
        self.baseline: Upstream | None = None
        self.recorder = recorder
        self.pool = pool
        self.clock = clock
        self.budget = budget
        self.extra_headers = extra_headers
        self.connect_timeout = connect_timeout
        self.upstream_timeout = upstream_timeout
        self.request_head_timeout = request_head_timeout
        self.keepalive_timeout = keepalive_timeout
        self.client_timeout = client_timeout
        self.tunnel_timeout = tunnel_timeout
        self.max_connections = max_connections
        self.max_header_bytes = max_header_bytes
        self.max_response_header_bytes = max_response_header_bytes
        self.connections: set[Served] = set()
        # Makes the HTTP/2 side of a connection that opened with the h2c preface (set by the
        # server; `h2client` sits above this module).
        self.h2_factory: Callable[[ServiceContext, asyncio.Transport], H2Side] | None = None
        self.h2pool: H2Pool | None = None  # HTTP/2 upstream connections (set by the server)
        self.callers: CallerResolver | None = None  # who connects (set by the server)
        self.capture_rate = 0.0  # the share of exchanges captured (router.capture_services)
        self.capture_body_bytes = 65536
        self.captured: frozenset[str] = frozenset()  # keys captured everywhere (the table's)
        self.connect_tasks: set[asyncio.Task[None]] = set()
        self.served_by: dict[str, bytes] = {}  # sandbox -> b"service@sandbox", built once
        # The preview edge's port (0: none) and the table's names -> keys: a request without a
        # key whose `Origin` is a preview host is that sandbox's (`core.preview.key_of_origin`).
        self.preview_port = 0
        self.names: dict[str, str] = {}
        # Host values already checked (`is_host`): clients send the same one on every request.
        self.hosts: set[bytes] = set()

    def new_capture(self, key: str, method: str, target: str,
                    headers: list[tuple[bytes, bytes]]) -> Capture | None:
        """The capture of an exchange, if this one is kept: every exchange of a key the table
        captures, a sample (`capture_rate`) of the rest where the service is captured."""
        rate = self.capture_rate
        if (key and key in self.captured) or (rate and (rate >= 1.0 or random.random() < rate)):
            return Capture(method, target[:2048], list(headers), self.capture_body_bytes)
        return None

    def served(self, route: ForkRoute) -> bytes:
        """`laneway-served-by` of a fork route: `service@sandbox`, encoded once."""
        served = self.served_by.get(route.sandbox)
        if served is None:
            served = self.served_by[route.sandbox] = route.served_by.encode()
        return served

    def key_of_origin(self, origin: bytes) -> str | None:
        return key_of_origin(origin.decode("latin-1"), self.names, self.preview_port)


def head_with_key(head: bytes, key: str) -> bytes:
    """A serialised request head whose `baggage` carries `key` (`core.baggage.with_key`: other
    members kept, one `baggage` field). For the rare request that got its key another way."""
    lines = head.split(b"\r\n")
    given = [line.partition(b":")[2].strip() for line in lines
             if line[:8].lower() == b"baggage:"]
    kept = [line for line in lines if line[:8].lower() != b"baggage:"]
    merged = with_key(b",".join(given).decode("latin-1"), key).encode("latin-1")
    kept.insert(1, b"baggage: " + merged)
    return b"\r\n".join(kept)


def choose_key(baggage: list[bytes], tracestate: bytes,
               extra_key: bytes) -> tuple[str | None, bool]:
    """The routing key of a request, and whether its `laneway-key` members disagreed: from
    `baggage` (several headers are one list in order, RFC 9110 §5.3; the last member decides,
    as the OpenTelemetry SDKs propagate it), else `tracestate`, else a configured header."""
    key = None
    conflict = False
    if baggage:
        value = baggage[0] if len(baggage) == 1 else b",".join(baggage)
        found = quick_key(value)
        key, conflict = found if found is not None else baggage_key(value)
    if key is None and tracestate:
        key = key_from_tracestate(tracestate)
    if key is None and extra_key:
        key = extra_key.decode("utf-8", "replace")
    return key, conflict


async def open_http1(ctx: ServiceContext,
                     upstream: Upstream) -> UpstreamConnection | tuple[int, str, str]:
    """A new HTTP/1.1 connection to `upstream`, or why there is none (`connect_failure`). The
    request waiting for it counts as in flight meanwhile (`UpstreamPool.busy`, for drains)."""
    pool = ctx.pool
    pool.connecting[upstream] = pool.connecting.get(upstream, 0) + 1
    try:
        _, conn = await asyncio.wait_for(
            asyncio.get_running_loop().create_connection(
                lambda: UpstreamConnection(pool, upstream, ctx.clock,
                                           ctx.max_response_header_bytes),
                upstream.host, upstream.port),
            ctx.connect_timeout,
        )
    except (TimeoutError, OSError) as exc:
        return connect_failure(exc, upstream.host, upstream.port, ctx.connect_timeout)
    finally:
        left = pool.connecting[upstream] - 1
        if left:
            pool.connecting[upstream] = left
        else:
            del pool.connecting[upstream]
    return conn


class H2Side(Served, Protocol):
    """What `ClientConnection` hands an h2c connection to (`h2client.H2ClientConnection`)."""

    counted: bool
    identity: ClientConnection | None  # the connection it came from: its caller, its hops

    def data_received(self, data: bytes) -> None: ...


# What the request loop does with a field, by lowercased name.
_HOP, _HOST, _BAGGAGE, _LENGTH, _TRACEPARENT, _TRACESTATE = "hop", "host", "bag", "cl", "tp", "ts"
_ORIGIN = "or"
_REQUEST_FIELDS: dict[bytes, str] = {
    **dict.fromkeys(HOP_BY_HOP, _HOP), b"host": _HOST, b"baggage": _BAGGAGE,
    b"content-length": _LENGTH, b"traceparent": _TRACEPARENT, b"tracestate": _TRACESTATE,
    b"origin": _ORIGIN,
}


class _Rejected(Exception):
    """Raised in a parser callback to stop parsing; `ClientConnection._rejection` says why."""


class ClientConnection(asyncio.Protocol):
    """A downstream connection: parses requests, routes each, streams responses back."""

    # Whether a whole plain request may skip the parser (`_plain_request`). A subclass that
    # decides a request's route in its own `_build` (the preview edge) sets it False.
    plain = True

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.clock = ctx.clock
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.closed = False
        self.counted = False
        self.active: Exchange | None = None
        self.parsing: Exchange | None = None
        self.queue: deque[Exchange] = deque()
        self.tunnel: Tunnel | None = None
        self.tunnel_up: Carrier | None = None
        self.write_paused = False
        self.corked = False
        self._out: list[bytes] = []
        self.last_seen = 0.0
        self.head_started = 0.0
        self.write_paused_at = 0.0
        self.closing_at = 0.0
        self.served_any = False
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._in_head = False
        self._begins = 0
        self._rejection: tuple[int, str, str] | None = None
        self._ignore_rest = False  # after `Connection: close`, or once a request was rejected
        self._method: bytes | None = None  # an extension method llhttp does not know
        self._method_wait = b""  # the start of a request whose method is not complete yet
        self._raw_head: bytes | None = None
        self._synthetic = False  # parsing a made-up head that re-frames a body (no upgrade)
        self._paused_by_upstream = False
        self._paused_by_queue = False
        self._paused_for_upgrade = False
        self._reading_paused = False
        self.caller: str | None = ""  # None while `callers` resolves it

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement its interface.
        self.transport = cast(asyncio.Transport, transport)
        ctx = self.ctx
        refusal = ctx.budget.refusal(len(ctx.connections), ctx.max_connections)
        if refusal is not None:
            self.closed = True
            self.transport.write(error_response(503, "too_many_connections", refusal,
                                                close=True))
            self.transport.close()
            return
        self.counted = True
        ctx.budget.open += 1
        ctx.connections.add(self)
        self.last_seen = self.clock.now
        callers = ctx.callers
        if callers is not None:
            if callers.by_address:
                peer = transport.get_extra_info("peername")
                self.caller = callers.by_address.get(peer[0], EXTERNAL) if peer else ""
            elif callers.active:
                self.caller = None
                callers.want(self)

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.from_client(data, self.clock.now)
            return
        if self.closed or self._ignore_rest:
            return
        self.last_seen = self.clock.now
        parsing = self.parsing
        if parsing is not None and parsing.upgrade:
            # Bytes after an upgrade request, before the upstream's 101: hold them (reading is
            # paused, so this is at most one read).
            parsing.tunnel_data += data
            return
        if self._method_wait:
            data, self._method_wait = self._method_wait + data, b""
        if self._begins == 0 and data[:1] == b"P" and not self._in_head:
            head = data[:24]
            if PREFACE.startswith(head):  # HTTP/2 with prior knowledge (h2c, gRPC)
                if len(head) < 24:
                    self._method_wait = data  # "P…" may still be POST: read on
                else:
                    self._to_h2(data)
                return
        at_boundary = parsing is None and not self._in_head
        if at_boundary and self.plain and self.active is None and self._method is None \
                and self._plain_request(data):
            return
        begins = self._begins
        # Raw bytes since the current head began: catches one huge header that httptools is
        # still accumulating (on_header only fires once a field is complete).
        self._head_bytes = self._head_bytes + len(data) if self._in_head else len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = int(exc.args[0]) if exc.args else len(data)
            self._upgraded(data[offset:])
            return
        except httptools.HttpParserInvalidMethodError:
            if at_boundary and self._begins == begins + 1:
                self._extension_method(data)
            elif not at_boundary and self._begins == begins and self._raw_head is not None:
                self._extension_method(self._raw_head + data)
            else:
                self._reject(400, "bad_request", "malformed HTTP request: an unknown method in "
                             "a pipelined request (send extension methods on their own)")
            return
        except httptools.HttpParserCallbackError:
            if self._rejection is not None:
                self._reject(*self._rejection)
                return
            raise
        except httptools.HttpParserError as exc:
            if not self._ignore_rest:  # bytes after `Connection: close` are ignored (RFC 9112)
                self._reject(400, "bad_request", f"malformed HTTP request: {exc}")
            return
        if self._in_head:
            if self._head_bytes > self.ctx.max_header_bytes + 65536:
                self._reject(431, "header_too_large", self._too_large_message())
            elif at_boundary and self._begins == begins + 1:
                self._raw_head = data  # kept until the method is known to llhttp
            elif self._raw_head is not None and self._begins == begins:
                self._raw_head += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.counted:
            self.counted = False
            self.ctx.budget.open -= 1
        self.ctx.connections.discard(self)
        if self.tunnel is not None:
            self.tunnel.close()
            if self.tunnel_up is not None:
                self.tunnel_up.close()
        for ex in [self.active, *self.queue]:
            if ex is not None and not ex.done:
                # 499: the client went away before the response was complete (nginx's code).
                self._finish(ex, ex.status if ex.response_started else 499, reusable=False)
        self.queue.clear()

    def eof_received(self) -> bool:
        """The client shut down its sending side. Requests it sent in full are still
        answered (then the connection closes); one cut short ends here."""
        parsing = self.parsing
        if self.tunnel is not None or (self.active is None and not self.queue) or self._in_head \
                or (parsing is not None and not parsing.request_done):
            return False  # asyncio closes the transport
        self._ignore_rest = True
        for ex in (self.active, *self.queue):
            if ex is not None:
                ex.keep_alive = False  # the last answer closes the connection
        return True

    def pause_writing(self) -> None:
        # The client does not read as fast as the upstream sends: stop reading the upstream.
        self.write_paused = True
        self.write_paused_at = self.clock.now
        up = self.tunnel_up if self.tunnel is not None else (
            self.active.upstream_conn if self.active is not None else None)
        if up is not None:
            up.pause()

    def resume_writing(self) -> None:
        self.write_paused = False
        up = self.tunnel_up if self.tunnel is not None else (
            self.active.upstream_conn if self.active is not None else None)
        if up is not None:
            up.resume()

    # httptools callbacks (requests)

    def on_message_begin(self) -> None:
        if self._synthetic:
            return
        self._begins += 1
        self._url = b""
        self._headers = []
        self._in_head = True
        self.head_started = self.clock.now

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # Sizes are checked once the head is complete (and, for a head still arriving, on raw
        # bytes after every read in data_received): nothing to count per field.
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._synthetic:
            return
        # The raw bytes read since the head began bound its size: only a head that may be
        # too large is measured field by field.
        if self._head_bytes > self.ctx.max_header_bytes \
                or len(self._headers) > MAX_HEADER_FIELDS:
            size = len(self._url) + sum(len(n) + len(v) + 4 for n, v in self._headers)
            if size > self.ctx.max_header_bytes or len(self._headers) > MAX_HEADER_FIELDS:
                self._rejection = (431, "header_too_large", self._too_large_message())
                raise _Rejected
        self._in_head = False
        self._head_bytes = 0
        self._raw_head = None
        ex = Exchange(self)
        ex.started = time.monotonic()
        parser = self.parser
        method = self._method or parser.get_method()
        self._method = None
        ex.method = method.decode("ascii", "replace")
        ex.is_head = method == b"HEAD"
        ex.keep_alive = parser.should_keep_alive()
        ex.http11 = parser.get_http_version() == "1.1"
        url = self._url
        ex.path = url[:512].decode("latin-1")
        self._build(ex, method, url, parser.should_upgrade())
        if self._rejection is not None:
            raise _Rejected
        if self.ctx.capture_rate or self.ctx.captured:
            ex.capture = self.ctx.new_capture(ex.key, ex.method, url[:2048].decode("latin-1"),
                                              self._headers)
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
        if ex.capture is not None:
            ex.capture.request_piece(body)
        if ex.body_sink is not None:
            ex.body_sink.body(body)
            return
        if ex.request_chunked:
            ex.send_body(b"%x\r\n%b\r\n" % (len(body), body), self.clock.now)
        else:
            ex.send_body(body, self.clock.now)

    def on_message_complete(self) -> None:
        ex = self.parsing
        if ex is None:
            return
        if ex.cancel_upgrade:
            # llhttp ends an upgrade request at its head; a declined upgrade's body follows
            # and is parsed again (`_upgraded`).
            ex.cancel_upgrade = False
            if ex.has_body:
                return
        ex.request_done = True
        if ex.body_sink is not None:
            ex.body_sink.body_end()
        elif ex.request_chunked and ex.local is None:
            ex.send_body(b"0\r\n\r\n", self.clock.now)
        if not ex.keep_alive:
            self._ignore_rest = True  # what follows `Connection: close` is not read
        if not ex.upgrade:
            self.parsing = None

    # request side

    def _plain_request(self, data: bytes) -> bool:
        """The common request, read without the parser: one whole plain request
        (`scan.scan_request`: one Host, at most one Content-Length whose body is all in `data`,
        no hop-by-hop field but `Connection: keep-alive`), forwarded as it came with `via`
        added. What the parser path would forward for it, without a callback per field;
        anything else, or a request that is captured, keyed by a configured header, may be a
        preview page's or goes to an HTTP/2 upstream, is the parser's (False)."""
        ctx = self.ctx
        if ctx.extra_headers or ctx.capture_rate or ctx.captured or ctx.protocol != "http":
            return False
        found = scan_request(data, ctx.max_header_bytes)
        if found is None:
            return False
        method, path, host, baggage, length, traceparent, tracestate, origin, forward = found
        if origin and ctx.preview_port:
            return False  # may be a preview page's call (`_route`)
        if host not in ctx.hosts:
            if not is_host(host):
                return False  # the parser's path answers 400
            if len(ctx.hosts) >= 256:
                ctx.hosts.clear()
            ctx.hosts.add(host)
        ex = Exchange(self)
        ex.started = time.monotonic()
        ex.method = method
        ex.is_head = method == "HEAD"
        ex.path = path
        ex.head = forward
        if length > 0:
            ex.has_body = True
            ex.body_length = length
            ex.retry_allowed = False  # as when the parser's path has sent a body
        ex.request_done = True
        if traceparent:
            ex.trace_id, ex.parent_id = trace_context(traceparent)
        self._route(ex, baggage, tracestate, b"", b"")
        self._begins += 1
        self._start(ex)
        return True

    def _build(self, ex: Exchange, method: bytes, url: bytes, llhttp_upgrade: bool) -> None:
        ctx = self.ctx
        if method == b"CONNECT":
            self._rejection = (405, "method_not_allowed",
                               "laneway's router does not tunnel CONNECT; send the request "
                               "to the service itself")
            return
        absolute = None
        if url[:1] != b"/":
            try:
                absolute = absolute_target(url)
            except ValueError as exc:
                self._rejection = (400, "bad_request", f"malformed HTTP request: {exc}")
                return
            if absolute is not None:
                url = absolute[1]
        lines: list[bytes] = [method, b" ", url, b" HTTP/1.1\r\n"]
        baggage: list[bytes] = []
        tracestate = b""
        traceparent = b""
        extra_key = b""
        origin = b""
        connection_tokens: list[bytes] = []
        codings: list[bytes] = []
        upgrade_value = b""
        hosts = 0
        extra_headers = ctx.extra_headers
        for name, value in self._headers:
            lname = name.lower()
            kind = _REQUEST_FIELDS.get(lname)  # one lookup for the common, plain field
            if kind is None:
                if extra_headers and lname in extra_headers and not extra_key:
                    extra_key = value.strip()
            elif kind is _HOP:
                if lname == b"transfer-encoding":
                    codings.extend(tokens(value))
                elif lname == b"connection":
                    connection_tokens.extend(tokens(value))
                elif lname == b"upgrade":
                    upgrade_value = value
                continue
            elif kind is _HOST:
                hosts += 1
                if not is_host(value):
                    self._rejection = (400, "bad_request", "malformed HTTP request: the Host "
                                       f"header {value[:100].decode('latin-1')!r} is not a "
                                       "host[:port] (RFC 9110 §7.2)")
                    return
                if absolute is not None:
                    continue  # replaced by the target's authority below
            elif kind is _BAGGAGE:
                baggage.append(value)
            elif kind is _LENGTH:
                ex.has_body = value.strip() not in (b"0", b"")
                if ex.has_body:
                    ex.body_length = int(value)  # llhttp has checked it is one number
            elif kind is _TRACEPARENT:
                traceparent = value
            elif kind is _ORIGIN:
                origin = value
            else:
                tracestate = value
            lines += (name, b": ", value, b"\r\n")
        if codings:
            if not ex.http11:
                self._rejection = (400, "bad_request", "malformed HTTP request: "
                                   "Transfer-Encoding in an HTTP/1.0 request is faulty "
                                   "framing (RFC 9112 §6.1)")
                return
            if codings != [b"chunked"]:
                self._rejection = (501, "unsupported_transfer_coding",
                                   "the request's transfer-encoding "
                                   f"{b', '.join(codings).decode('latin-1')!r} is not "
                                   "supported; send the body with `chunked` alone or a "
                                   "content-length")
                return
            ex.request_chunked = True
            ex.has_body = True
        if hosts > 1:
            self._rejection = (400, "bad_request",
                               "malformed HTTP request: more than one Host header")
            return
        if absolute is not None:
            lines.append(b"host: " + absolute[0] + b"\r\n")
        elif hosts == 0:
            if ex.http11:
                self._rejection = (400, "bad_request", "malformed HTTP request: an HTTP/1.1 "
                                   "request must carry a Host header (RFC 9112 §3.2)")
                return
            lines.append(b"host: " + self._local_host() + b"\r\n")  # a proxy must send one
        if connection_tokens:
            lines = drop_named(lines, connection_tokens, 4)
        if ex.request_chunked:
            lines.append(b"transfer-encoding: chunked\r\n")
        if llhttp_upgrade:
            # Upgrades the router forwards: a protocol other than h2c (which it does not
            # speak upstream yet), on a request without a body (a body would be held until a
            # 101 that a plain server never sends).
            offered = [t for t in tokens(upgrade_value) if t != b"h2c"] \
                if not ex.has_body else []
            if offered:
                ex.upgrade = True
                lines.append(b"connection: upgrade\r\nupgrade: " + upgrade_value + b"\r\n")
            else:
                ex.cancel_upgrade = True
        lines.append(VIA)
        lines.append(b"\r\n")
        ex.head = b"".join(lines)
        if traceparent:
            ex.trace_id, ex.parent_id = trace_context(traceparent)
        self._route(ex, baggage, tracestate, extra_key, origin)

    def _route(self, ex: Exchange, baggage: list[bytes], tracestate: bytes, extra_key: bytes,
               origin: bytes) -> None:
        """Where `ex` goes, from its routing key: the fork its key names, else the baseline;
        the router's own 503 when that has no process that can answer."""
        ctx = self.ctx
        # `choose_key`, with its common cases first: one `baggage` field whose key (or its
        # absence, with nothing else that could carry one) the compiled scan reads
        # (`scan.quick_key`), or nothing that could carry a key at all.
        if len(baggage) == 1 and (found := quick_key(baggage[0])) is not None \
                and (found[0] is not None or not (tracestate or extra_key)):
            key, ex.key_conflict = found
        elif baggage or tracestate or extra_key:
            key, ex.key_conflict = choose_key(baggage, tracestate, extra_key)
        else:
            key = None
        if key is None and origin and ctx.preview_port:
            key = ctx.key_of_origin(origin)  # a preview page calling this service directly
            if key is not None:
                # The service must pass the key on to its own calls: it gets it in `baggage`,
                # as from the edge, so that its propagation carries it to the next hop.
                ex.head = head_with_key(ex.head, key)
        route = None if key is None else ctx.routes.get(key)  # `core.routes.decide`
        if key is not None:
            ex.key = key
        # A request with a body not read yet ends its connection; one without keeps it.
        unread = ex.has_body and not ex.request_done
        if route is None:
            ex.upstream = ctx.baseline
            ex.served_by = ctx.name_b
            if ex.upstream is None:
                ex.error = (f"baseline service {ctx.name} has no running process yet "
                            "(starting, or its command failed); see `laneway status`")
                ex.local = error_response(503, "baseline_not_ready", ex.error,
                                          served_by=ctx.name_b, close=unread,
                                          extra={"service": ctx.name})
            return
        ex.destination = route.sandbox
        ex.fork = route.fork
        ex.served_by = ctx.served(route)
        if route.ready and route.upstream is not None:
            ex.upstream = route.upstream
            return
        ex.error = route.reason
        ex.local = error_response(
            503, "fork_not_ready", route.reason, served_by=ex.served_by, close=unread,
            extra={"service": ctx.name, "sandbox": route.sandbox, "fork": route.fork,
                   "routing_key": key or ""},
        )

    def _local_host(self) -> bytes:
        """`host:port` this client connected to, for a request that named no Host."""
        sockname = self.transport.get_extra_info("sockname") if self.transport else None
        if not sockname:
            return b"localhost"
        host = str(sockname[0])
        if ":" in host:
            host = f"[{host}]"
        return f"{host}:{sockname[1]}".encode()

    def _to_h2(self, data: bytes) -> None:
        """The connection opened with the HTTP/2 preface: the h2 side takes the transport."""
        ctx = self.ctx
        transport = self.transport
        if ctx.h2_factory is None or transport is None:
            self._reject(400, "bad_request", "this router does not serve HTTP/2")
            return
        h2 = ctx.h2_factory(ctx, transport)
        ctx.connections.discard(self)
        h2.counted, self.counted = self.counted, False
        h2.identity = self
        ctx.connections.add(h2)
        self.closed = True  # nothing reaches this object any more
        transport.set_protocol(cast(asyncio.BaseProtocol, h2))
        h2.data_received(data)

    def _extension_method(self, raw: bytes) -> None:
        """A method llhttp does not know (any RFC 9110 token is a method): parse the request
        with a stand-in method and forward the real one."""
        method, space, rest = raw.partition(b" ")
        if not space:
            if len(raw) < MAX_METHOD and is_token(raw):
                self.parser = httptools.HttpRequestParser(self)
                self._method_wait = raw  # the method is not complete yet
                self._in_head = False
                return
            self._reject(400, "bad_request", "malformed HTTP request: invalid method")
            return
        if len(method) > MAX_METHOD or not is_token(method):
            self._reject(400, "bad_request", "malformed HTTP request: the method is not a "
                         "token (RFC 9110 §9.1)")
            return
        self.parser = httptools.HttpRequestParser(self)
        self._in_head = False
        self._raw_head = None
        self._method = method
        self.data_received(b"GET " + rest)

    def _upgraded(self, rest: bytes) -> None:
        """llhttp stopped at an upgrade request's head. Forwarded upgrades wait for the 101;
        declined ones go on as plain HTTP/1.1 from the same bytes."""
        if self._rejection is not None:
            self._reject(*self._rejection)
            return
        ex = self.parsing
        if ex is not None and ex.upgrade:
            ex.tunnel_data = rest
            self._paused_for_upgrade = True
            self._sync_reading()
            return
        self.parser = httptools.HttpRequestParser(self)
        if ex is not None and not ex.request_done:
            # Re-frame the body it announced with a made-up head, so that llhttp reads it.
            framing = b"transfer-encoding: chunked" if ex.request_chunked else \
                b"content-length: %d" % ex.body_length
            self._synthetic = True
            try:
                self.parser.feed_data(b"PUT / HTTP/1.1\r\n" + framing + b"\r\n\r\n")
            finally:
                self._synthetic = False
        if rest:
            self.data_received(rest)

    def _start(self, ex: Exchange) -> None:
        self.active = ex
        if ex.local is not None:
            self._respond_locally(ex, ex.local, ex.local_status)
            return
        upstream = ex.upstream
        assert upstream is not None
        ctx = self.ctx
        if ctx.protocol != "http":
            self._to_http2_upstream(ex, upstream)
            return
        conn = ctx.pool.take(upstream)
        if conn is not None:
            conn.attach(ex)  # timeouts: the sweep checks every client's exchange
            return
        self._connect(ex, upstream)

    def _to_http2_upstream(self, ex: Exchange, upstream: Upstream) -> None:
        """The service's processes speak HTTP/2 only (`protocol: h2c`/`grpc`): the exchange
        rides one stream of a pooled HTTP/2 connection (`h1toh2.H1ToH2`)."""
        ctx = self.ctx
        if ctx.protocol == "grpc" or ex.upgrade:
            # gRPC needs HTTP/2 end to end (trailers); an upgrade has no HTTP/2 equivalent here.
            what = "an upgrade" if ex.upgrade else "HTTP/1.1"
            self.upstream_failed(ex, 505, "http2_only",
                                 f"service {ctx.name} is declared protocol: {ctx.protocol}, "
                                 f"whose processes cannot be sent {what}; send HTTP/2 with "
                                 "prior knowledge (a gRPC client, or curl "
                                 "--http2-prior-knowledge), or declare protocol: http")
            return
        if ctx.h2pool is None:
            self.upstream_failed(ex, 502, "upstream_http2_unavailable",
                                 "this router has no HTTP/2 upstream pool")
            return
        bridge = H1ToH2(ex, self.clock)
        ctx.h2pool.stream(upstream, bridge, self.clock, ctx.max_response_header_bytes,
                          ctx.connect_timeout)

    def _connect(self, ex: Exchange, upstream: Upstream) -> None:
        task = asyncio.get_running_loop().create_task(
            self._open_upstream(ex, upstream), name=f"laneway-connect-{self.ctx.name}"
        )
        self.ctx.connect_tasks.add(task)
        task.add_done_callback(self.ctx.connect_tasks.discard)

    async def _open_upstream(self, ex: Exchange, upstream: Upstream) -> None:
        opened = await open_http1(self.ctx, upstream)
        if isinstance(opened, tuple):
            status, code, message = opened
            self.upstream_failed(ex, status, code, f"{ex.describe()} {message}")
        elif ex.done or self.closed:
            opened.detach(reusable=not self.closed)
        else:
            opened.attach(ex)

    # timeouts (called by the sweep; `timeouts.py` has the table)

    def check_timeouts(self, now: float) -> None:
        transport = self.transport
        if self.closed or transport is None:
            return
        ctx = self.ctx
        if self.tunnel is not None:
            if now - self.tunnel.last_activity > ctx.tunnel_timeout:
                self.tunnel.abort()
            return
        if transport.is_closing():
            if now - self.closing_at > ctx.client_timeout:
                transport.abort()  # its last output was never read: give the memory back
            return
        if self.write_paused:
            if now - self.write_paused_at > ctx.client_timeout:
                transport.abort()
            return
        if self._in_head:
            if now - self.head_started > ctx.request_head_timeout:
                self._reject(408, "request_head_timeout",
                             f"the request's head did not arrive within "
                             f"{ctx.request_head_timeout:g}s (router.request_head_timeout)")
            return
        ex = self.active
        if ex is None:
            if self.parsing is None and not self._method_wait:
                limit = ctx.keepalive_timeout if self.served_any else ctx.request_head_timeout
                if now - self.last_seen > limit:
                    self.close()  # an idle connection: closed without a word, as nginx does
            elif now - self.last_seen > ctx.request_head_timeout:
                self.close()
            return
        if ex.done or ex.local is not None:
            return
        if not ex.request_done and not self._reading_paused:
            # Waiting for the client's body: the client's inactivity, not the upstream's.
            if now - self.last_seen > ctx.client_timeout:
                ex.close_client = True
                self.upstream_failed(ex, 408, "client_timeout",
                                     f"the request's body stopped arriving for "
                                     f"{ctx.client_timeout:g}s (router.client_timeout)")
            return
        up = ex.upstream_conn
        if up is not None and now - up.last_activity > ctx.upstream_timeout:
            ex.upstream_conn = None
            up.close()
            self.upstream_failed(ex, 504, "upstream_timeout",
                                 f"{ex.describe()} did not answer within "
                                 f"{ctx.upstream_timeout:g}s")

    # response side (called by UpstreamConnection through `exchange.Downstream`)

    def describe_upstream(self, ex: Exchange) -> str:
        if ex.destination == "baseline":
            return f"baseline service {self.ctx.name}"
        return f"fork {self.ctx.name}@{ex.destination}"

    def simple_served(self, ex: Exchange) -> bytes | None:
        """A whole simple response (`scan.simple_answer`) is sent as it came, laneway's fields
        added, only to a client that keeps its HTTP/1.1 connection, asked with a method whose
        answer has a body, and is not captured: what `response_head` would write for it,
        without a callback per field."""
        if ex.done or ex.is_head or ex.upgrade or not ex.http11 or not ex.keep_alive \
                or ex.capture is not None or ex.close_client:
            return None
        return ex.served_by

    def answer_simple(self, ex: Exchange, status: int, answer: bytes) -> None:
        ex.status = status
        ex.response_started = True
        self.write(answer)
        self._finish(ex, status, reusable=ex.request_done)  # as `response_complete` would

    def response_head(self, ex: Exchange, status: int, reason: bytes,
                      headers: list[tuple[bytes, bytes]]) -> None:
        if ex.done:
            return
        informational = 100 <= status < 200 and status != 101
        if status == 101 and not ex.upgrade:
            self._bad_upstream(ex, f"{ex.describe()} switched protocols (101) for a request "
                                   "that did not ask to upgrade")
            return
        lines: list[bytes] = [b"HTTP/1.1 %d %s\r\n" % (status, reason or b"")]
        codings: list[bytes] = []
        named: list[bytes] = []
        has_length = False
        for name, value in headers:
            lname = name.lower()
            if lname in HOP_BY_HOP:
                if lname == b"transfer-encoding":
                    codings.extend(tokens(value))
                elif lname == b"connection":
                    named.extend(tokens(value))
                    if status == 101:
                        lines.append(name + b": " + value + b"\r\n")
                elif status == 101 and lname == b"upgrade":
                    lines.append(name + b": " + value + b"\r\n")
                continue
            if lname == b"content-length":
                has_length = True
            lines.append(name)
            lines.append(b": ")
            lines.append(value)
            lines.append(b"\r\n")
        if named:
            lines = drop_named(lines, named, 1)
        if codings:
            other_codings = [c for c in codings if c != b"chunked"]
            upstream_framed = has_length or codings[-1] == b"chunked"
        else:
            other_codings = codings
            upstream_framed = has_length
        if ex.served_by:  # empty at the preview edge: the service's router said it
            lines.append(b"laneway-served-by: " + ex.served_by + b"\r\n")
        lines.append(VIA)
        if ex.capture is not None and not informational:
            ex.capture.status = status
            ex.capture.response_headers = headers
        if not informational:
            no_body = ex.is_head or status in (101, 204, 304)
            if other_codings and not no_body:
                if not ex.http11:
                    self._bad_upstream(ex, f"{ex.describe()} sent a body with transfer-coding "
                                           f"{b', '.join(other_codings).decode('latin-1')!r}, "
                                           "which an HTTP/1.0 client cannot be sent")
                    return
                has_length = False  # a coded body is framed by chunked, never by a length
            ex.status = status
            ex.response_started = True
            if not no_body and not has_length:
                if ex.http11:
                    ex.rechunk = True
                    coding = b", ".join([*other_codings, b"chunked"])
                    lines.append(b"transfer-encoding: " + coding + b"\r\n")
                else:
                    ex.close_client = True  # HTTP/1.0 client: the body ends when we close
            if not upstream_framed and not no_body:
                ex.close_delimited = True  # its body runs until the upstream closes
            if (not ex.keep_alive or ex.close_client or (ex.upgrade and status != 101)) \
                    and status != 101:
                ex.close_client = True
                lines.append(b"connection: close\r\n")
            elif not ex.http11:
                # HTTP/1.0 closes by default: say the connection stays (RFC 9112 §C.2.2).
                lines.append(b"connection: keep-alive\r\n")
        lines.append(b"\r\n")
        self.write(b"".join(lines))
        if not informational and ex.is_head and ex.upstream_conn is not None:
            # No body follows a HEAD response, whatever its content-length says.
            ex.upstream_conn.skip_body()

    def _bad_upstream(self, ex: Exchange, message: str) -> None:
        up = ex.upstream_conn
        ex.upstream_conn = None
        if up is not None:
            up.close()
        self.upstream_failed(ex, 502, "upstream_bad_response", message)

    def response_body(self, ex: Exchange, body: bytes) -> None:
        if ex.done:
            return
        if ex.capture is not None:
            ex.capture.response_piece(body)
        if ex.rechunk:
            self.write(b"%x\r\n%b\r\n" % (len(body), body))
        else:
            self.write(body)

    def response_complete(self, ex: Exchange, reusable: bool) -> None:
        if ex.done or not ex.response_started:
            return  # the end of a 1xx interim response; the final one follows
        if ex.rechunk:
            self.write(b"0\r\n\r\n")
        self._finish(ex, ex.status, reusable=reusable and ex.request_done)

    def upstream_lost(self, ex: Exchange, up: Carrier) -> None:
        """The upstream closed while `ex` was using it."""
        if ex.done:
            return
        if ex.response_started:
            if ex.close_delimited:
                # A close-delimited body ends here; any other response was cut short.
                self.response_complete(ex, reusable=False)
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
        unread = (ex.has_body and not ex.request_done) or ex.close_client
        body = error_response(status, code, message, served_by=ex.served_by, close=unread,
                              extra=extra)
        if unread:
            ex.close_client = True
        self._respond_locally(ex, body, status)

    def set_upstream_backpressure(self, paused: bool) -> None:
        self._paused_by_upstream = paused
        self._sync_reading()

    # tunnels (Upgrade, e.g. WebSocket)

    def start_tunnel(self, ex: Exchange, up: Carrier, rest: bytes) -> None:
        """The upstream answered 101: from now on both sides are raw byte streams."""
        assert isinstance(up, UpstreamConnection)
        if ex.done or self.transport is None or up.transport is None:
            # response_head has already answered a 101 the request did not ask for (502), or
            # the client is gone: nothing to tunnel.
            up.close()
            return
        tunnel = Tunnel(self.transport, up.transport, self.clock.now)
        self.tunnel = tunnel
        self.tunnel_up = up
        up.tunnel = tunnel
        up.tunnel_peer = self
        up.exchange = None
        if ex.tunnel_data:
            up.transport.write(ex.tunnel_data)
        if rest:
            self.write(rest)
        self._record(ex, 101)
        ex.done = True
        self.active = None
        self.parsing = None
        self._paused_for_upgrade = False
        if self.write_paused:
            up.pause()
        self._sync_reading()

    def tunnel_closed(self) -> None:
        self.close()

    # bookkeeping

    def write(self, data: bytes) -> None:
        if self.caller is None:
            # Before the answer goes out: a client that has its answer may close at once, and
            # a closed socket has no owner left to find.
            self.settle_caller()
        if self.corked:
            self._out.append(data)
        elif self.transport is not None and not self.closed:
            self.transport.write(data)

    def uncork(self) -> None:
        self.corked = False
        out = self._out
        if out:
            self._out = []
            if self.transport is not None and not self.closed:
                self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def close(self) -> None:
        if self.corked:
            self.uncork()  # what was gathered goes out before the close
        if self.transport is not None and not self.transport.is_closing():
            self.closing_at = self.clock.now
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
            up.detach(reusable)
        self._record(ex, status)
        self.served_any = True
        self.last_seen = self.clock.now  # keep-alive idle time starts when the answer is done
        if self.active is ex:
            self.active = None
        if self._paused_by_upstream:
            self._paused_by_upstream = False  # that upstream connection is no longer ours
            self._sync_reading()
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

    def peer_ports(self) -> tuple[int, int] | None:
        """(the client's port, ours), for `callers`."""
        if self.transport is None:
            return None
        peer = self.transport.get_extra_info("peername")
        own = self.transport.get_extra_info("sockname")
        if not peer or not own or len(peer) < 2:
            return None
        return int(peer[1]), int(own[1])

    def settle_caller(self) -> None:
        """Name this connection's caller now, if the batch (`callers.want`) has not come to it
        yet: called before the first answer is written (HTTP/1.1) or when a stream opens
        (HTTP/2), while the client is still connected and its socket can be found."""
        callers = self.ctx.callers
        if self.caller is None and callers is not None:
            callers.settle_now(self)

    def caller_name(self) -> str:
        """This connection's caller for a hop record ("" where the router cannot tell)."""
        if self.caller is None:
            self.settle_caller()
        return self.caller or ""

    def _record(self, ex: Exchange, status: int) -> None:
        ctx = self.ctx
        if self.caller is None:
            self.settle_caller()  # an exchange that wrote nothing (its client went away)
        capture = ex.capture
        # A row of `ROW_FIELDS` (`core.hops.HopRow`), the duration in ms to the microsecond
        # (rounded by hand: `round(d, 3)` is 0.2 µs, a tenth of what is left of this path).
        ctx.recorder.record((
            ex.started + WALL_OFFSET, ex.trace_id, ex.parent_id, ctx.name, ex.key,
            ex.destination, ex.fork, status, int((time.monotonic() - ex.started) * 1e6 + 0.5) / 1e3,
            ex.method, ex.path, ex.error, ex.key_conflict, None, self.caller or "",
            None if capture is None else capture.finished(status)))

    def _reject(self, status: int, code: str, message: str) -> None:
        """Answer a request the router will not forward, after the responses before it, and
        read nothing more from this connection."""
        self._rejection = None
        self._ignore_rest = True
        self._in_head = False
        self._paused_by_queue = True  # nothing more is read
        self._sync_reading()
        parsing = self.parsing
        self.parsing = None
        if parsing is not None and not parsing.request_done and not parsing.done:
            # The body of a request already on its way is malformed: that exchange fails.
            parsing.close_client = True
            if parsing is self.active:
                self.upstream_failed(parsing, status, code, message)
                return
            self.queue.remove(parsing)
        ex = Exchange(self)
        ex.started = time.monotonic()
        ex.error = message
        ex.served_by = self.ctx.name_b
        ex.local = error_response(status, code, message, close=True)
        ex.local_status = status
        ex.close_client = True
        ex.request_done = True
        ex.method = "-"
        if self.active is None:
            self._start(ex)
        else:
            self.queue.append(ex)

    def _too_large_message(self) -> str:
        return (f"the request's header section is larger than "
                f"{self.ctx.max_header_bytes} bytes (or has more than {MAX_HEADER_FIELDS} "
                "fields)")

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
