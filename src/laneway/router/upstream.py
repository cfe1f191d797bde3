"""Upstream connections (router → baseline or fork process) and their pool.

One `UpstreamConnection` carries one exchange at a time (no pipelining towards upstreams); it is
returned to the pool when a response ends cleanly on a keep-alive connection whose request was
fully sent. Its parser is fresh per exchange, because `httptools` cannot be told that a HEAD
response has no body.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, cast

import httptools

from laneway.core.routes import Upstream

if TYPE_CHECKING:
    from laneway.router.proxy import ClientConnection, Exchange

__all__ = ["UpstreamConnection", "UpstreamPool"]


class UpstreamPool:
    """Idle keep-alive connections per upstream, bounded so a burst does not pin sockets."""

    def __init__(self, max_idle_per_upstream: int = 64) -> None:
        self._idle: dict[Upstream, list[UpstreamConnection]] = {}
        self._max_idle = max_idle_per_upstream
        self.open: set[UpstreamConnection] = set()
        # Connections being opened, per upstream: each carries a request already routed there.
        self.connecting: dict[Upstream, int] = {}

    def busy(self, upstream: Upstream) -> int:
        """Requests given to `upstream` and not done: on its open connections, or waiting for
        one. Counted when asked (a drain polls it), so the request path pays nothing."""
        return self.connecting.get(upstream, 0) + sum(
            1 for conn in self.open if conn.exchange is not None and conn.upstream == upstream)

    async def drained(self, upstream: Upstream, timeout: float, poll: float = 0.02) -> int:
        """Wait until no request given to `upstream` is in flight (at most `timeout` s), then
        close its idle connections; returns how many requests were still in flight."""
        deadline = time.monotonic() + timeout
        # Polled rather than signalled: an event per upstream would put bookkeeping back on
        # every request's path.
        while (left := self.busy(upstream)) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(poll)
        for conn in self._idle.pop(upstream, []):
            conn.close()
        return left

    def take(self, upstream: Upstream) -> UpstreamConnection | None:
        idle = self._idle.get(upstream)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    def put(self, conn: UpstreamConnection) -> None:
        idle = self._idle.setdefault(conn.upstream, [])
        if len(idle) >= self._max_idle:
            conn.close()
        else:
            idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        self.open.discard(conn)
        idle = self._idle.get(conn.upstream)
        if idle and conn in idle:
            idle.remove(conn)

    def close_all(self) -> None:
        for conn in list(self.open):
            conn.close()
        self._idle.clear()


class UpstreamConnection(asyncio.Protocol):
    def __init__(self, pool: UpstreamPool, upstream: Upstream) -> None:
        self.pool = pool
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.tunnel: ClientConnection | None = None
        self.closed = False
        self.reused = False
        self.last_activity = 0.0
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason = b""
        # Completion is acted on after feed_data returns, never inside a parser callback: acting
        # on it may hand this connection to the next exchange, which needs a fresh parser.
        self.completed = False
        self.keep_alive = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they implement its interface.
        self.transport = cast(asyncio.Transport, transport)
        self.pool.open.add(self)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        ex = self.exchange
        if ex is None or self.parser is None:
            # Bytes from an idle upstream: it is not speaking HTTP as we expect; drop it.
            self.close()
            return
        self.last_activity = time.monotonic()
        try:
            self.parser.feed_data(data)
            if self.completed:
                self.completed = False
                ex.conn.response_complete(ex, self)
        except httptools.HttpParserUpgrade as exc:
            offset = int(exc.args[0]) if exc.args else len(data)
            ex.conn.start_tunnel(ex, self, data[offset:])
        except httptools.HttpParserError as exc:
            self.exchange = None
            self.close()
            ex.conn.upstream_failed(ex, 502, "upstream_bad_response",
                                    f"{ex.describe()} sent a malformed HTTP response: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.tunnel is not None:
            tunnel, self.tunnel = self.tunnel, None
            tunnel.close()
            return
        ex, self.exchange = self.exchange, None
        if ex is not None:
            ex.conn.upstream_lost(ex, self)

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.conn.set_upstream_backpressure(True)

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.conn.set_upstream_backpressure(False)

    # exchange handling

    def attach(self, ex: Exchange) -> None:
        assert self.transport is not None
        self.exchange = ex
        self.parser = httptools.HttpResponseParser(self)
        self._headers = []
        self.completed = False
        ex.upstream_conn = self
        self.last_activity = time.monotonic()
        pending = ex.pending
        ex.pending = None
        self.transport.write(ex.head if not pending else ex.head + b"".join(pending))

    def detach(self, reusable: bool) -> None:
        self.exchange = None
        self.parser = None
        if reusable and not self.closed:
            self.reused = True
            self.pool.put(self)
        else:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.close()

    # httptools callbacks

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        ex = self.exchange
        assert ex is not None
        assert self.parser is not None
        status = self.parser.get_status_code()
        headers, self._headers = self._headers, []
        reason, self._reason = self._reason, b""
        self.keep_alive = self.parser.should_keep_alive()
        ex.conn.response_head(ex, status, reason, headers)

    def on_body(self, body: bytes) -> None:
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
