"""HTTP/2 clients of the router (h2c with prior knowledge, so gRPC), on the port of HTTP/1.1.

`ClientConnection` sees the connection preface (`PRI * HTTP/2.0…`) in a connection's first bytes
and hands the transport to an `H2ClientConnection` (the hook is `ServiceContext.h2_factory`, set
by the server, so that `client` does not import this module). The HTTP/2 state machine is the
`h2` library (sans-IO, the Python field's reference implementation, from the hyper project): it
frames, validates and keeps flow-control windows; we decide what each stream does.

Every stream is a `Call`: routed by the same rule as HTTP/1.1 (`baggage`, `tracestate`, extra
headers → `core.routes.decide`), forwarded to the upstream over HTTP/2 (a pooled, multiplexed
`h2upstream.H2Upstream`) for gRPC calls and for `h2c`/`grpc` services, and over HTTP/1.1 (the
pooled `UpstreamConnection`, the Call standing in for the client) for other requests to `http`
services. What a call guarantees:

- headers, metadata and trailers (`grpc-status`, `grpc-message`, `-bin` metadata) pass as they
  are; `grpc-timeout` is forwarded reduced by the time spent in the router, and the router ends
  a call that outlives it with `DEADLINE_EXCEEDED`;
- a reset either way is a reset of the other stream (client cancel → upstream `CANCEL`, the
  upstream's code → the client), and a lost client connection cancels all its upstream streams;
- the router's own answers follow the routing contract: for gRPC a Trailers-Only response with
  `UNAVAILABLE` (fork not ready or crashed, upstream refused or gone) or `DEADLINE_EXCEEDED`,
  whose message names the sandbox, the fork and why; for plain HTTP/2 the JSON answers of HTTP/1.1;
- memory is bounded by flow control: data is acknowledged to the sender only once it has been
  passed on, so a call holds at most the window the router granted (`STREAM_WINDOW`), and a
  connection at most its connection window;
- abuse is bounded: at most `MAX_STREAMS` concurrent streams, a header list of
  `max_header_bytes`, frames no larger than 16 KiB checked as they arrive (`FrameGuard`: h2
  would buffer an announced 16 MiB frame whole before checking it), reading stops while the
  client does not read what the router writes (a SETTINGS or PING flood cannot pile up
  answers), and a connection that resets most of the streams it opens (the "rapid reset"
  attack) is closed with `ENHANCE_YOUR_CALM`.

Timeouts: gRPC streams are never cut for inactivity (a server stream may be quiet for hours);
only their deadline ends them, and a call without one waits `upstream_timeout` for the first
response headers. Plain HTTP/2 requests keep HTTP/1.1's `upstream_timeout` inactivity rule. An
HTTP/2 connection with no stream open is closed after `keepalive_timeout` (with a GOAWAY).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import deque
from urllib.parse import quote

from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings

from laneway.core.grpc import format_grpc_timeout, parse_grpc_timeout
from laneway.core.hops import trace_context
from laneway.core.routes import Upstream, decide
from laneway.router.capture import Capture
from laneway.router.client import (
    WALL_OFFSET,
    ClientConnection,
    ServiceContext,
    choose_key,
    open_http1,
)
from laneway.router.exchange import Carrier, Exchange
from laneway.router.h2upstream import (
    STREAM_WINDOW,
    FrameGuard,
    H2Pool,
    H2Upstream,
    new_connection,
    take,
)
from laneway.router.headers import HOP_BY_HOP, PREFACE, tokens

__all__ = ["H2ClientConnection"]

Headers = list[tuple[bytes, bytes]]

MAX_STREAMS = 128  # concurrent streams per client connection (SETTINGS_MAX_CONCURRENT_STREAMS)
CONNECTION_WINDOW = 1024 * 1024  # request bytes one client connection may have in the router
# Rapid reset (CVE-2023-44487): a client that cancels most of what it opens is closed.
RESET_FLOOR = 200
VIA = b"2 laneway"
LINGER = 2.0  # seconds a connection ended by a GOAWAY for an error is read (and dropped)

# gRPC status codes (grpc/doc/statuscodes.md) the router answers with or records.
CANCELLED, UNKNOWN, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED = 1, 2, 4, 8
INTERNAL, UNAVAILABLE = 13, 14
# RST_STREAM codes as gRPC clients read them (grpc/doc/PROTOCOL-HTTP2.md, "Errors").
_RESET_STATUS: dict[int, int] = {ErrorCodes.NO_ERROR: INTERNAL, ErrorCodes.CANCEL: CANCELLED,
                 ErrorCodes.REFUSED_STREAM: UNAVAILABLE,
                 ErrorCodes.ENHANCE_YOUR_CALM: RESOURCE_EXHAUSTED}

def grpc_message(text: str) -> bytes:
    """`grpc-message` is percent-encoded UTF-8 (everything but printable ASCII and not `%`)."""
    return quote(text, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~").encode("ascii")


def is_grpc(content_type: bytes) -> bool:
    # gRPC-Web (`application/grpc-web…`) is an HTTP/1.1-compatible protocol of its own.
    return content_type.startswith(b"application/grpc") and \
        not content_type.startswith(b"application/grpc-web")


class H2ClientConnection(asyncio.Protocol):
    """A client connection speaking HTTP/2: many `Call`s at once."""

    def __init__(self, ctx: ServiceContext, h2pool: H2Pool, transport: asyncio.Transport) -> None:
        self.ctx = ctx
        self.clock = ctx.clock
        self.h2pool = h2pool
        self.transport: asyncio.Transport | None = transport
        self.h2 = new_connection(client_side=False)
        self.h2.local_settings = Settings(client=False, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
            SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            SettingCodes.MAX_HEADER_LIST_SIZE: ctx.max_header_bytes,
        })
        self.h2.decoder.max_header_list_size = ctx.max_header_bytes
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.calls: dict[int, Call] = {}
        self.closed = False
        self.counted = False
        self.going_away = False
        self.write_paused = False
        self.write_paused_at = 0.0
        self.reading_paused = False
        self.last_seen = ctx.clock.now
        self.opened = 0
        self.resets = 0
        self.flush_scheduled = False
        self.guard = FrameGuard(len(PREFACE))
        self.lingering = False
        self.lingering_since = 0.0
        self.identity: ClientConnection | None = None  # set by ClientConnection on the switch
        self.flush()

    # asyncio.Protocol (the transport was made by ClientConnection)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_seen = self.clock.now
        if self.lingering:
            return  # after our GOAWAY: read and drop, so that closing does not reset it away
        if not self.guard.feed(data):
            self._goaway(ErrorCodes.FRAME_SIZE_ERROR)
            return
        try:
            events = self.h2.receive_data(data)
        except ProtocolError:
            # h2 has queued a GOAWAY naming the error (bad preface, a flow-control
            # violation, an oversized header list…): send it and end the connection.
            self._goaway(None)
            return
        calls = self.calls
        for event in events:
            if isinstance(event, DataReceived):
                call = calls.get(event.stream_id)
                if call is not None:
                    call.down_data(event.data, event.flow_controlled_length)
                else:
                    self.ack(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, RequestReceived):
                self.opened += 1
                if self.identity is not None and self.identity.caller is None:
                    self.identity.settle_caller()  # while the client is surely connected
                call = Call(self, event.stream_id, event.headers,
                            event.stream_ended is not None)
                calls[event.stream_id] = call
                call.start()
            elif isinstance(event, StreamEnded):
                call = calls.get(event.stream_id)
                if call is not None:
                    call.down_end()
            elif isinstance(event, StreamReset):
                call = calls.get(event.stream_id)
                if call is not None:
                    if not call.response_done:
                        self.resets += 1
                    call.down_reset(int(event.error_code or 0))
                if self.resets > RESET_FLOOR and self.resets * 2 > self.opened:
                    self._calm_down()
                    return
            elif isinstance(event, WindowUpdated):
                if event.stream_id:
                    call = calls.get(event.stream_id)
                    if call is not None:
                        call.pump_down()
                else:
                    for call in list(calls.values()):
                        if call.to_down or call.to_down_end:
                            call.pump_down()
            elif isinstance(event, TrailersReceived):
                call = calls.get(event.stream_id)
                if call is not None:
                    call.down_trailers(event.headers)
            elif isinstance(event, RemoteSettingsChanged):
                if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                    for call in list(calls.values()):
                        call.pump_down()
            elif isinstance(event, ConnectionTerminated):
                self.going_away = True
        self.flush()
        if self.going_away and not self.calls:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.counted:
            self.counted = False
            self.ctx.budget.open -= 1
        self.ctx.connections.discard(self)
        for call in list(self.calls.values()):
            call.down_reset(ErrorCodes.CANCEL)
        self.calls.clear()

    def eof_received(self) -> bool:
        return False  # HTTP/2 has GOAWAY for a graceful end; a half-close ends the connection

    def pause_writing(self) -> None:
        # The client does not read what we send: stop reading it, so that frames that make us
        # answer (SETTINGS, PING) or open streams cannot pile output up.
        self.write_paused = True
        self.write_paused_at = self.clock.now
        self._sync_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._sync_reading()

    def _sync_reading(self) -> None:
        if self.transport is None or self.closed:
            return
        if self.write_paused and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
        elif not self.write_paused and self.reading_paused:
            self.reading_paused = False
            self.transport.resume_reading()

    # writing

    def flush(self) -> None:
        self.flush_scheduled = False
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def schedule_flush(self) -> None:
        """Write what the calls queued once this turn of the loop is done: the frames of
        every stream an upstream read touched go out together."""
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def ack(self, size: int, stream_id: int) -> None:
        if size and not self.closed:
            # A closed stream: h2 keeps the connection window right.
            with contextlib.suppress(ProtocolError):
                self.h2.acknowledge_received_data(size, stream_id)

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            try:
                self.h2.close_connection()
                self.flush()
            except ProtocolError:
                pass
            self.transport.close()

    def _calm_down(self) -> None:
        self._goaway(ErrorCodes.ENHANCE_YOUR_CALM, b"too many streams reset by the client")

    def _goaway(self, code: ErrorCodes | None, why: bytes = b"") -> None:
        """End the connection for a protocol error: the GOAWAY that says why (queued by h2
        already when `code` is None), then a lingering close. Closing a socket with unread
        input makes the kernel send a reset, which can destroy the GOAWAY before the client
        reads it; so the router shuts its sending side, drops what still arrives, and closes
        when the client does (or `LINGER` seconds later)."""
        if code is not None:
            with contextlib.suppress(ProtocolError):
                self.h2.close_connection(code, additional_data=why or None)
        self.flush()
        self.lingering = True
        self.lingering_since = self.clock.now
        for call in list(self.calls.values()):
            call.down_reset(ErrorCodes.CANCEL)
        transport = self.transport
        if transport is not None and not transport.is_closing():
            try:
                transport.write_eof()
            except (OSError, RuntimeError, NotImplementedError):
                transport.close()

    def finished(self, call: Call) -> None:
        self.calls.pop(call.sid, None)
        self.last_seen = self.clock.now
        if self.going_away and not self.calls:
            self.close()

    # timeouts (the sweep calls this; `timeouts.py`)

    def check_timeouts(self, now: float) -> None:
        if self.closed or self.transport is None:
            return
        ctx = self.ctx
        if self.lingering:
            if now - self.lingering_since > LINGER:
                self.transport.abort()
            return
        if self.write_paused:
            if now - self.write_paused_at > ctx.client_timeout:
                self.transport.abort()
            return
        if not self.calls:
            if now - self.last_seen > ctx.keepalive_timeout:
                self.close()
            return
        for call in list(self.calls.values()):
            call.check_timeout(now)


class Call:
    """One HTTP/2 stream from a client, joined to an upstream stream or exchange."""

    def __init__(self, down: H2ClientConnection, sid: int, headers: Headers,
                 ended: bool) -> None:
        self.down = down
        self.sid = sid
        self.ctx = down.ctx
        self.headers = headers
        self.request_ended = ended  # END_STREAM received from the client
        self.started = time.monotonic()
        self.last_activity = down.clock.now
        self.method = ""
        self.path = ""
        self.authority = b""
        self.grpc = False
        self.deadline: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.key = ""
        self.key_conflict = False
        self.trace_id = ""
        self.parent_id = ""
        self.destination = "baseline"
        self.fork = ""
        self.served_by = down.ctx.name_b
        self.upstream: Upstream | None = None
        self.error = ""
        self.status = 0
        self.grpc_status: int | None = None
        self.response_started = False
        self.response_done = False  # END_STREAM (or a reset) sent to the client
        self.done = False
        self.retried = False
        self.body_sent = False
        # upstream over HTTP/2
        self.up: H2Upstream | None = None
        self.up_sid = 0
        # upstream over HTTP/1.1
        self.exchange: Exchange | None = None
        self.h1_paused = False  # the HTTP/1.1 upstream does not read: acks held
        self.held_acks = 0
        # data on its way, each with the size to acknowledge to its sender once passed on
        self.to_up: deque[bytes] = deque()
        self.to_up_trailers: Headers | None = None
        self.to_up_end = False
        self.up_ended = False  # END_STREAM sent upstream
        self.to_down: deque[bytes] = deque()
        self.to_down_size = 0
        self.to_down_trailers: Headers | None = None
        self.to_down_end = False
        self.capture: Capture | None = None  # the exchange kept for `laneway diff`

    # routing

    def start(self) -> None:
        ctx = self.ctx
        baggage: list[bytes] = []
        tracestate = b""
        extra_key = b""
        content_type = b""
        extra = ctx.extra_headers
        for name, value in self.headers:
            if name[:1] == b":":
                if name == b":method":
                    self.method = value.decode("ascii", "replace")
                elif name == b":path":
                    self.path = value[:512].decode("latin-1")
                elif name == b":authority":
                    self.authority = value
            elif name == b"baggage":
                baggage.append(value)
            elif name == b"content-type":
                content_type = value
            elif name == b"traceparent":
                self.trace_id, self.parent_id = trace_context(value)
            elif name == b"tracestate":
                tracestate = value
            elif name == b"grpc-timeout":
                timeout = parse_grpc_timeout(value)
                if timeout is not None:
                    self.deadline = self.started + timeout
            elif extra and name in extra and not extra_key:
                extra_key = value.strip()
        self.grpc = is_grpc(content_type)
        key, self.key_conflict = choose_key(baggage, tracestate, extra_key)
        if key is not None:
            self.key = key
        if ctx.capture_rate or ctx.captured:
            self._start_capture()
        if self.deadline is not None:
            loop = asyncio.get_running_loop()
            delay = self.deadline - time.monotonic()
            self.timer = loop.call_later(max(delay, 0.0), self._deadline_passed)
        route = decide(ctx.routes, key)
        if route is None:
            self.upstream = ctx.baseline
            if self.upstream is None:
                self.fail(503, "baseline_not_ready",
                          f"baseline service {ctx.name} has no running process yet (starting, "
                          "or its command failed); see `laneway status`")
                return
        else:
            self.destination = route.sandbox
            self.fork = route.fork
            self.served_by = ctx.served(route)
            if not route.ready or route.upstream is None:
                self.fail(503, "fork_not_ready", route.reason)
                return
            self.upstream = route.upstream
        self._connect()

    def _start_capture(self) -> None:
        target = next((v for n, v in self.headers if n == b":path"), b"")
        self.capture = self.ctx.new_capture(
            self.key, self.method, target.decode("latin-1"),
            [(n, v) for n, v in self.headers if n[:1] != b":"])
        if self.capture is not None:
            self.capture.grpc = self.grpc

    def _capture_head(self, status: int, headers: Headers) -> None:
        if self.capture is not None:
            self.capture.status = status
            self.capture.response_headers = [(n, v) for n, v in headers if n[:1] != b":"]

    def _connect(self) -> None:
        assert self.upstream is not None
        ctx = self.ctx
        if self.grpc or ctx.protocol != "http":
            self.down.h2pool.stream(self.upstream, self, ctx.clock, ctx.max_response_header_bytes,
                                    ctx.connect_timeout)
        else:
            self._start_h1()

    def describe(self) -> str:
        if self.destination == "baseline":
            return f"baseline service {self.ctx.name}"
        return f"fork {self.ctx.name}@{self.destination}"

    # the upstream over HTTP/2 (`h2upstream.Waiter` and `StreamPeer`)

    def up_connected(self, conn: H2Upstream) -> None:
        if self.done:
            return
        headers: Headers = []
        for name, value in self.headers:
            if name == b"grpc-timeout" and self.deadline is not None:
                headers.append((name, format_grpc_timeout(self.deadline - time.monotonic())))
            else:
                headers.append((name, value))
        headers.append((b"via", VIA))
        self.up = conn
        end = self.request_ended and not self.to_up
        try:
            self.up_sid = conn.open_stream(self, headers, end_stream=end)
        except ProtocolError as exc:
            self.up = None
            self.fail(502, "upstream_bad_request", f"cannot open a stream to {self.describe()}: "
                      f"{exc}")
            return
        self.up_ended = end
        self.pump_up()

    def up_connect_failed(self, status: int, code: str, message: str) -> None:
        self.up = None
        self.fail(status, code, f"{self.describe()} {message}")

    def up_headers(self, headers: Headers, ended: bool) -> None:
        if self.done:
            return
        self.last_activity = self.down.clock.now
        status = 200
        out: Headers = []
        for name, value in headers:
            if name == b":status":
                status = int(value)
            elif name == b"grpc-status":
                self.grpc_status = _int(value)
            out.append((name, value))
        self._capture_head(status, headers)
        out.append((b"laneway-served-by", self.served_by))
        self.status = status
        self.response_started = True
        try:
            self.down.h2.send_headers(self.sid, out, end_stream=ended)
        except ProtocolError:
            self.down_reset(ErrorCodes.CANCEL)
            return
        if ended:
            self._response_ended()
        self.down.schedule_flush()

    def up_informational(self, headers: Headers) -> None:
        if not self.done and not self.response_started:
            try:
                self.down.h2.send_headers(self.sid, headers)
            except ProtocolError:
                return
            self.down.schedule_flush()

    def up_data(self, data: bytes, flow_length: int) -> None:
        if self.done:
            if self.up is not None:
                self.up.ack(flow_length, self.up_sid)
            return
        self.last_activity = self.down.clock.now
        if flow_length > len(data) and self.up is not None:
            self.up.ack(flow_length - len(data), self.up_sid)  # padding: nothing to pass on
        if self.capture is not None:
            self.capture.response_piece(data)
        if data:
            self.to_down.append(data)
            self.to_down_size += len(data)
        self.pump_down()

    def up_trailers(self, headers: Headers) -> None:
        if self.done:
            return
        for name, value in headers:
            if name == b"grpc-status":
                self.grpc_status = _int(value)
        if self.capture is not None:
            self.capture.trailers = list(headers)
        self.to_down_trailers = headers
        self.to_down_end = True
        self.pump_down()

    def up_end(self) -> None:
        if self.done:
            return
        self.to_down_end = True
        self.pump_down()

    def up_reset(self, code: int) -> None:
        if self.done:
            return
        self.up = None
        message = f"{self.describe()} reset the stream (HTTP/2 error {code})"
        if not self.grpc and not self.response_started:
            # A plain HTTP/2 request (curl to a gRPC server, say) that the upstream refused
            # with a reset: an answer that says so reads better than a bare reset.
            self.fail(502, "upstream_reset", f"{message}; a gRPC server resets requests that "
                      "are not gRPC calls" if self.ctx.protocol == "grpc" else message)
            return
        if self.grpc:
            self.grpc_status = _RESET_STATUS.get(code, INTERNAL)
        self.error = message
        self._reset_down(code)

    def up_lost(self, message: str, refused: bool) -> None:
        if self.done:
            return
        self.up = None
        if refused and not self.retried and not self.response_started and not self.body_sent:
            # Never processed by the upstream (GOAWAY), and no body byte left the router (what
            # was sent is not kept): safe to send again on another connection, once.
            self.retried = True
            self._connect()
            return
        self.fail(502, "upstream_closed", f"{self.describe()} {message}")

    def up_window(self) -> None:
        if self.to_up or (self.to_up_end and not self.up_ended):
            self.pump_up()  # only a call with something waiting (a window opened for all)

    # the client's side

    def down_data(self, data: bytes, flow_length: int) -> None:
        self.last_activity = self.down.clock.now
        if flow_length > len(data):
            self.down.ack(flow_length - len(data), self.sid)
        if self.done:
            self.down.ack(len(data), self.sid)
            return
        if self.capture is not None:
            self.capture.request_piece(data)
        if self.exchange is not None:
            self._h1_body(data)
            return
        if data:
            self.to_up.append(data)
        self.pump_up()

    def down_trailers(self, headers: Headers) -> None:
        self.request_ended = True
        if self.exchange is not None:
            self._h1_end()  # HTTP/1.1 upstreams get the body; request trailers are dropped
            return
        self.to_up_trailers = headers
        self.to_up_end = True
        self.pump_up()

    def down_end(self) -> None:
        if self.request_ended and self.up_ended:
            return
        self.request_ended = True
        if self.exchange is not None:
            self._h1_end()
            return
        self.to_up_end = True
        self.pump_up()

    def down_reset(self, code: int) -> None:
        """The client cancelled the stream (or its connection went)."""
        if self.done:
            return
        self.response_done = True
        if self.grpc and self.grpc_status is None:
            # A client gives up at its deadline with a reset (CANCEL): that is the deadline.
            expired = self.deadline is not None and time.monotonic() >= self.deadline - 0.01
            self.grpc_status = DEADLINE_EXCEEDED if expired else CANCELLED
            if expired:
                self.error = "the call's deadline passed (the client gave up at grpc-timeout)"
        if self.up is not None:
            self.up.reset(self.up_sid, ErrorCodes.CANCEL)
            self.up.flush()
            self.up = None
        self._close_h1()
        self._finish(self.status if self.response_started else 499)

    # moving data, within the windows

    def pump_up(self) -> None:
        up = self.up
        if up is None or self.up_ended or self.done:
            return
        queue = self.to_up
        sid = self.up_sid
        down = self.down
        sent = False
        while queue:
            window = up.send_window(sid)
            if window <= 0:
                break
            chunk = take(queue, window)
            up.send_data(sid, chunk)
            down.ack(len(chunk), self.sid)
            sent = self.body_sent = True
        if not queue and self.to_up_end:
            if self.to_up_trailers is not None:
                up.send_trailers(sid, self.to_up_trailers)
            else:
                up.end_stream(sid)
            self.up_ended = True
            sent = True
        if sent:
            up.schedule_flush()
            down.schedule_flush()

    def pump_down(self) -> None:
        if self.done or self.response_done:
            return
        h2 = self.down.h2
        sid = self.sid
        queue = self.to_down
        up = self.up
        sent = False
        try:
            while queue:
                window = min(h2.local_flow_control_window(sid), h2.max_outbound_frame_size)
                if window <= 0:
                    break
                chunk = take(queue, window)
                end = not queue and self.to_down_end and self.to_down_trailers is None
                h2.send_data(sid, chunk, end_stream=end)
                self.to_down_size -= len(chunk)
                if up is not None:
                    up.ack(len(chunk), self.up_sid)
                sent = True
                if end:
                    self._response_ended()
            if not queue and self.to_down_end and not self.response_done:
                if self.to_down_trailers is not None:
                    h2.send_headers(sid, self.to_down_trailers, end_stream=True)
                else:
                    h2.end_stream(sid)
                sent = True
                self._response_ended()
        except ProtocolError:
            self.down_reset(ErrorCodes.CANCEL)  # the client closed the stream meanwhile
            return
        if sent:
            self.down.schedule_flush()
            if up is not None:
                up.schedule_flush()
        if self.exchange is not None:
            self._h1_flow()

    def _response_ended(self) -> None:
        self.response_done = True
        if not self.request_ended:
            # A complete answer before the whole request: ask the client to stop sending,
            # without error (RFC 9113 §8.1).
            with contextlib.suppress(ProtocolError):
                self.down.h2.reset_stream(self.sid, ErrorCodes.NO_ERROR)
            if self.up is not None and not self.up_ended:
                self.up.reset(self.up_sid, ErrorCodes.NO_ERROR)
        if self.up is not None:
            self.up.release(self.up_sid)
        self._finish(self.status)

    # the router's own answers

    def fail(self, status: int, code: str, message: str) -> None:
        """Answer the call ourselves: the routing contract's error, as gRPC or as HTTP."""
        if self.done:
            return
        self.error = message
        if self.up is not None:
            self.up.reset(self.up_sid, ErrorCodes.CANCEL)
            self.up = None
        self._close_h1()
        if not self.response_started:
            self.to_down.clear()
            self.to_down_size = 0
        extra = self._error_fields(code)
        if self.grpc:
            grpc_status = DEADLINE_EXCEEDED if code in ("deadline_exceeded", "upstream_timeout") \
                else UNAVAILABLE
            self.grpc_status = grpc_status
            fields: Headers = [
                (b"grpc-status", b"%d" % grpc_status),
                (b"grpc-message", grpc_message(message)),
                (b"laneway-error", code.encode()),
                *[(b"laneway-" + k.replace("_", "-").encode(), v.encode())
                  for k, v in extra.items() if k != "service" and v],
                (b"laneway-served-by", self.served_by),
            ]
            if self.response_started:
                self.to_down_trailers = fields
            else:
                self.status = 200
                self.response_started = True
                head: Headers = [(b":status", b"200"), (b"content-type", b"application/grpc"),
                                 *fields]
                try:
                    self.down.h2.send_headers(self.sid, head, end_stream=True)
                except ProtocolError:
                    self._finish(499)
                    return
                self.down.schedule_flush()
                self.status = status  # the hop reads as the HTTP contract's (core.hops.Hop)
                self._response_ended()
                return
            self.to_down_end = True
            self.pump_down()
            return
        if self.response_started:
            self._reset_down(ErrorCodes.INTERNAL_ERROR)
            return
        body = json.dumps({"error": code, "message": message, **extra}).encode() + b"\n"
        self.status = status
        self.response_started = True
        try:
            self.down.h2.send_headers(self.sid, [
                (b":status", b"%d" % status), (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(body)), (b"laneway-error", code.encode()),
                (b"laneway-served-by", self.served_by)])
        except ProtocolError:
            self._finish(499)
            return
        self.to_down.append(body)
        self.to_down_size += len(body)
        self.to_down_end = True
        self.pump_down()

    def _error_fields(self, code: str) -> dict[str, str]:
        fields = {"service": self.ctx.name}
        if self.destination != "baseline":
            fields["sandbox"] = self.destination
            fields["fork"] = self.fork
            if code == "fork_not_ready":
                fields["routing_key"] = self.key
        return fields

    def _reset_down(self, code: int) -> None:
        self.response_done = True
        with contextlib.suppress(ProtocolError):
            self.down.h2.reset_stream(self.sid, code)
        self.down.schedule_flush()
        self._close_h1()
        self._finish(self.status if self.response_started else 502)

    def _deadline_passed(self) -> None:
        self.timer = None
        if not self.done:
            spent = time.monotonic() - self.started
            self.fail(504, "deadline_exceeded",
                      f"{self.describe()} did not finish the call within its deadline "
                      f"(grpc-timeout, {spent:.3f}s)")

    def check_timeout(self, now: float) -> None:
        if self.done or (self.grpc and (self.deadline is not None or self.response_started)):
            return  # gRPC: the deadline decides, never inactivity
        if now - self.last_activity > self.ctx.upstream_timeout:
            if self.exchange is not None and self.exchange.upstream_conn is not None:
                self.exchange.upstream_conn.close()
            self.fail(504, "upstream_timeout",
                      f"{self.describe()} did not answer within "
                      f"{self.ctx.upstream_timeout:g}s (router.upstream_timeout)")

    def _finish(self, status: int) -> None:
        if self.done:
            return
        self.done = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.to_up.clear()
        self.to_down.clear()
        ctx = self.ctx
        identity = self.down.identity
        ctx.recorder.record((  # a row of `ROW_FIELDS` (`core.hops.HopRow`)
            self.started + WALL_OFFSET, self.trace_id, self.parent_id, ctx.name, self.key,
            self.destination, self.fork, status,
            int((time.monotonic() - self.started) * 1e6 + 0.5) / 1e3, self.method, self.path,
            self.error, self.key_conflict, self.grpc_status,
            identity.caller_name() if identity is not None else "",
            None if self.capture is None else self.capture.finished(status)))
        self.down.finished(self)

    # the upstream over HTTP/1.1: this call stands in for the client (`exchange.Downstream`)

    write_paused = False
    corked = False

    def uncork(self) -> None:
        pass

    def _start_h1(self) -> None:
        assert self.upstream is not None
        ex = Exchange(self)
        ex.started = self.started
        ex.method = self.method
        ex.path = self.path
        ex.is_head = self.method == "HEAD"
        ex.upstream = self.upstream
        target = b"/"
        fields: Headers = []
        has_length = False
        for name, value in self.headers:
            if name[:1] == b":":
                if name == b":path":
                    target = value
                continue
            if name in HOP_BY_HOP:
                continue  # h2 has refused connection-specific fields; `te: trailers` stays here
            if name == b"content-length":
                has_length = True
                ex.has_body = value.strip() not in (b"0", b"")
            fields.append((name, value))
        lines = [self.method.encode(), b" ", target, b" HTTP/1.1\r\n"]
        for name, value in fields:
            lines += (name, b": ", value, b"\r\n")
        lines.append(b"host: " + (self.authority or self.ctx.name_b) + b"\r\n")
        if not self.request_ended and not has_length:
            ex.request_chunked = True
            ex.has_body = True
            lines.append(b"transfer-encoding: chunked\r\n")
        lines.append(b"via: 2 laneway\r\n\r\n")
        ex.head = b"".join(lines)
        ex.request_done = self.request_ended
        self.exchange = ex
        conn = self.ctx.pool.take(self.upstream)
        if conn is not None:
            conn.attach(ex)
            return
        task = asyncio.get_running_loop().create_task(self._open_h1(ex, self.upstream),
                                                      name=f"laneway-connect-{self.ctx.name}")
        self.ctx.connect_tasks.add(task)
        task.add_done_callback(self.ctx.connect_tasks.discard)

    async def _open_h1(self, ex: Exchange, upstream: Upstream) -> None:
        opened = await open_http1(self.ctx, upstream)
        if isinstance(opened, tuple):
            status, code, message = opened
            self.fail(status, code, f"{self.describe()} {message}")
        elif ex.done or self.done:
            opened.detach(reusable=True)
        else:
            opened.attach(ex)

    def _h1_body(self, data: bytes) -> None:
        ex = self.exchange
        assert ex is not None
        if data:
            ex.send_body(b"%x\r\n%b\r\n" % (len(data), data) if ex.request_chunked else data,
                         self.down.clock.now)
            if self.h1_paused:
                self.held_acks += len(data)
            else:
                self.down.ack(len(data), self.sid)
                self.down.schedule_flush()

    def _h1_end(self) -> None:
        ex = self.exchange
        assert ex is not None
        if not ex.request_done:
            ex.request_done = True
            if ex.request_chunked:
                ex.send_body(b"0\r\n\r\n", self.down.clock.now)

    def _h1_flow(self) -> None:
        """Read the HTTP/1.1 upstream only while the client's window takes what it sends."""
        ex = self.exchange
        up = ex.upstream_conn if ex is not None else None
        if up is None:
            return
        if self.to_down_size > STREAM_WINDOW:
            up.pause()
        else:
            up.resume()

    def _close_h1(self) -> None:
        ex, self.exchange = self.exchange, None
        if ex is not None:
            ex.done = True
            up, ex.upstream_conn = ex.upstream_conn, None
            if up is not None:
                up.close()

    def describe_upstream(self, ex: Exchange) -> str:
        return self.describe()

    def simple_served(self, ex: Exchange) -> bytes | None:
        return None  # an HTTP/2 client's response is made of frames, never the head as sent

    def answer_simple(self, ex: Exchange, status: int, answer: bytes) -> None:
        raise AssertionError("an HTTP/2 client never takes a response whole (simple_served)")

    def response_head(self, ex: Exchange, status: int, reason: bytes,
                      headers: list[tuple[bytes, bytes]]) -> None:
        if self.done or ex.done or 100 <= status < 200:
            return  # interim answers stay between the router and the upstream
        out: Headers = [(b":status", b"%d" % status)]
        named: set[bytes] = set()
        for name, value in headers:
            lname = name.lower()
            if lname in HOP_BY_HOP:
                if lname == b"connection":
                    named.update(tokens(value))
                continue
            out.append((lname, value))
        if named:
            out = [field for field in out if field[0] not in named]
        self._capture_head(status, out)
        out.append((b"laneway-served-by", self.served_by))
        out.append((b"via", b"1.1 laneway"))
        ex.status = status
        ex.response_started = True
        self.status = status
        self.response_started = True
        no_body = ex.is_head or status in (204, 304)
        try:
            self.down.h2.send_headers(self.sid, out, end_stream=no_body)
        except ProtocolError:
            self.down_reset(ErrorCodes.CANCEL)
            return
        self.down.schedule_flush()
        if no_body and ex.upstream_conn is not None:
            ex.upstream_conn.skip_body()

    def response_body(self, ex: Exchange, body: bytes) -> None:
        if self.done or ex.done:
            return
        self.last_activity = self.down.clock.now
        if self.capture is not None:
            self.capture.response_piece(body)
        self.to_down.append(body)
        self.to_down_size += len(body)
        self.pump_down()

    def response_complete(self, ex: Exchange, reusable: bool) -> None:
        if ex.done:
            return
        ex.done = True
        up, ex.upstream_conn = ex.upstream_conn, None
        self.exchange = None
        if up is not None:
            up.detach(reusable and ex.request_done)
        if self.done:
            return
        if self.response_done:
            return  # a HEAD's or 204's end was already sent with its headers
        self.to_down_end = True
        self.pump_down()

    def upstream_lost(self, ex: Exchange, up: Carrier) -> None:
        if ex.done:
            return
        if ex.response_started and not ex.close_delimited:
            self._close_h1()
            self._reset_down(ErrorCodes.INTERNAL_ERROR)
            return
        if ex.response_started:
            self.response_complete(ex, reusable=False)
            return
        if up.reused and not self.retried and ex.request_done:
            self.retried = True
            ex.upstream_conn = None
            self.exchange = None
            self._start_h1()  # a pooled connection the upstream had just closed
            return
        ex.done = True
        self.exchange = None
        self.fail(502, "upstream_closed",
                  f"{self.describe()} closed the connection without answering (did the process "
                  "crash? `laneway status` says; `laneway sandbox logs` shows a fork's output)")

    def upstream_failed(self, ex: Exchange, status: int, code: str, message: str) -> None:
        if ex.done:
            return
        self.fail(status, code, message)

    def set_upstream_backpressure(self, paused: bool) -> None:
        self.h1_paused = paused
        if not paused and self.held_acks:
            held, self.held_acks = self.held_acks, 0
            self.down.ack(held, self.sid)
            self.down.schedule_flush()

    def start_tunnel(self, ex: Exchange, up: Carrier, rest: bytes) -> None:
        up.close()  # HTTP/2 requests never ask to upgrade; a 101 for one is refused
        self.fail(502, "upstream_bad_response",
                  f"{self.describe()} switched protocols (101) for an HTTP/2 request")

    def tunnel_closed(self) -> None:
        pass


def _int(value: bytes) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None
