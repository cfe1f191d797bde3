"""Upstream connections (router → baseline or fork process).

One `UpstreamConnection` carries one exchange at a time (no pipelining towards upstreams). Its
parser is fresh per exchange, because `httptools` cannot be told that a HEAD response has no
body, and made at the response's first read only when the response is not forwarded whole
(`scan.simple_answer`). What it guarantees:

- **Nothing after a complete response reaches anyone.** Bytes that follow a complete response,
  in the same read or while the connection is idle in the pool, close the connection; the
  exchange it carried ends cleanly and the next request gets a fresh connection.
- **Back to the pool only when idle, reading and with nothing pending** (`detach`): a
  connection whose reading was paused for a slow client is resumed first; one with request bytes
  still unsent is closed.
- **A bounded response head**: a header section over `max_response_header_bytes` is a `502`.
"""

from __future__ import annotations

import asyncio
from typing import cast

import httptools

from laneway.core.routes import Upstream
from laneway.router.exchange import PENDING_LIMIT, Downstream, Exchange
from laneway.router.pool import UpstreamPool
from laneway.router.scan import simple_answer
from laneway.router.timeouts import Clock
from laneway.router.tunnel import Tunnel

__all__ = ["UpstreamConnection", "UpstreamPool"]


class _AfterResponse(Exception):
    """Stops the parser at bytes that follow a complete response."""


class _HeadTooLarge(Exception):
    pass


class UpstreamConnection(asyncio.Protocol):
    def __init__(self, pool: UpstreamPool[UpstreamConnection], upstream: Upstream,
                 clock: Clock, max_header_bytes: int) -> None:
        self.pool = pool
        self.upstream = upstream
        self.clock = clock
        self.max_header_bytes = max_header_bytes
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.tunnel: Tunnel | None = None
        self.tunnel_peer: Downstream | None = None
        self.closed = False
        self.reused = False
        self.paused = False  # reading paused by us, because the client is slow to read
        self.last_activity = 0.0
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._in_head = False
        self._head_size = 0
        self._head_raw = 0
        # Completion is acted on after feed_data returns, never inside a parser callback: acting
        # on it may hand this connection to the next exchange, which needs a fresh parser.
        self.completed = False
        self.keep_alive = False

    @property
    def busy(self) -> bool:
        return self.exchange is not None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement its interface.
        self.transport = cast(asyncio.Transport, transport)
        self.pool.open.add(self)

    def data_received(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel.from_upstream(data, self.clock.now)
            return
        ex = self.exchange
        if ex is None:
            # Bytes from an idle upstream: not an answer to anything; nobody may read them.
            self.close()
            return
        self.last_activity = self.clock.now
        if self._in_head:
            self._head_raw += len(data)
        parser = self.parser
        # The response's first read: a whole simple response is one write of its own.
        if parser is None and self._simple_response(ex, data):
            return
        # What this read makes the client side write (a head, body bytes, a chunk's end) goes
        # out in one write: one system call per read instead of one per piece.
        client = ex.conn
        client.corked = True
        try:
            if parser is None:
                parser = self.parser = httptools.HttpResponseParser(self)
            self._feed(ex, parser, data)
        finally:
            client.uncork()

    def _simple_response(self, ex: Exchange, data: bytes) -> bool:
        """The common case at a response's first read (`scan.simple_answer`): forwarded as it
        came, laneway's fields added, without llhttp's callback per field, when the client
        side may take it whole (`simple_served`); anything else goes to the parser from its
        first byte."""
        conn = ex.conn
        served = conn.simple_served(ex)
        if served is None:
            return False
        found = simple_answer(data, self.max_header_bytes, served)
        if found is None:
            return False
        self.keep_alive = True  # HTTP/1.1 without `Connection: close`
        conn.answer_simple(ex, found[0], found[1])
        return True

    def _feed(self, ex: Exchange, parser: httptools.HttpResponseParser, data: bytes) -> None:
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            offset = int(exc.args[0]) if exc.args else len(data)
            ex.conn.start_tunnel(ex, self, data[offset:])
            return
        except httptools.HttpParserError as exc:
            if self.completed:
                # A complete response, then bytes nobody asked for: the response stands, the
                # connection goes.
                self.completed = False
                ex.conn.response_complete(ex, reusable=False)
                self.close()
                return
            self._fail(ex, exc)
            return
        if self.completed:
            self.completed = False
            ex.conn.response_complete(ex, reusable=self.keep_alive)
        elif self._in_head and self._head_raw > self.max_header_bytes + 65536:
            # One header still accumulating inside httptools (on_header fires when complete).
            self._fail(ex, _HeadTooLarge())

    def _fail(self, ex: Exchange, exc: Exception) -> None:
        self.exchange = None
        self.close()
        if isinstance(exc, _HeadTooLarge) or self._head_size > self.max_header_bytes:
            ex.conn.upstream_failed(
                ex, 502, "upstream_header_too_large",
                f"{ex.describe()} sent a response header section larger than "
                f"{self.max_header_bytes} bytes (router.max_response_header_bytes)")
            return
        ex.conn.upstream_failed(ex, 502, "upstream_bad_response",
                                f"{ex.describe()} sent a malformed HTTP response: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.tunnel is not None:
            tunnel, self.tunnel = self.tunnel, None
            tunnel.close()
            if self.tunnel_peer is not None:
                self.tunnel_peer.tunnel_closed()
            return
        ex, self.exchange = self.exchange, None
        if ex is not None:
            ex.conn.upstream_lost(ex, self)

    def pause_writing(self) -> None:
        # The upstream does not read what we send (a request body, tunnel bytes): stop reading
        # the client until it does.
        peer = self.tunnel_peer if self.tunnel is not None else (
            self.exchange.conn if self.exchange is not None else None)
        if peer is not None:
            peer.set_upstream_backpressure(True)

    def resume_writing(self) -> None:
        peer = self.tunnel_peer if self.tunnel is not None else (
            self.exchange.conn if self.exchange is not None else None)
        if peer is not None:
            peer.set_upstream_backpressure(False)

    # flow control, asked by the client side

    def pause(self) -> None:
        if not self.paused and self.transport is not None and not self.closed:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused and self.transport is not None and not self.closed:
            self.paused = False
            self.transport.resume_reading()

    # exchange handling

    def attach(self, ex: Exchange) -> None:
        assert self.transport is not None
        self.exchange = ex
        # Made at the response's first read, unless it is forwarded whole without one.
        self.parser = None
        self._headers = []
        self.completed = False
        ex.upstream_conn = self
        self.last_activity = self.clock.now
        if ex.conn.write_paused:
            self.pause()  # the client still has not read the last response
        pending = ex.pending
        ex.pending = None
        if ex.pending_size > PENDING_LIMIT:
            ex.conn.set_upstream_backpressure(False)  # before the write, which may pause again
        self.transport.write(ex.head if not pending else ex.head + b"".join(pending))

    def detach(self, reusable: bool) -> None:
        self.exchange = None
        self.parser = None
        transport = self.transport
        if reusable and not self.closed and transport is not None \
                and not transport.get_write_buffer_size():
            if self.paused:
                self.resume()
            self.reused = True
            self.pool.put(self)
        else:
            self.close()

    def skip_body(self) -> None:
        """The response has no body whatever its head says (an answer to HEAD)."""
        self.completed = True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.close()

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self.completed:
            raise _AfterResponse
        self._in_head = True
        self._head_size = 0

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self.max_header_bytes:
            raise _HeadTooLarge

    def on_headers_complete(self) -> None:
        ex = self.exchange
        assert ex is not None
        assert self.parser is not None
        self._in_head = False
        self._head_raw = 0
        status = self.parser.get_status_code()
        headers, self._headers = self._headers, []
        reason, self._reason = self._reason, b""
        self.keep_alive = self.parser.should_keep_alive()
        ex.conn.response_head(ex, status, reason, headers)

    def on_body(self, body: bytes) -> None:
        if self.completed:
            raise _AfterResponse  # bytes after a HEAD response's head
        ex = self.exchange
        if ex is not None:
            ex.conn.response_body(ex, body)

    def on_message_complete(self) -> None:
        ex = self.exchange
        # The end of a 1xx interim response is not the end of the exchange.
        if ex is not None and ex.response_started:
            self.completed = True
            # Read now: llhttp resets its flags once the callback returns.
            self.keep_alive = self.parser is not None and self.parser.should_keep_alive()
