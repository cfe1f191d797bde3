"""Idle keep-alive upstream connections, per upstream, and the count of requests in flight.

A connection enters the pool only when it is idle, reading, and has nothing left to send
(`UpstreamConnection.detach` checks); one that sends anything while idle is closed, so a stray
byte can never be read as the answer to the next request (`UpstreamConnection.data_received`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from laneway.core.routes import Upstream

__all__ = ["Pooled", "UpstreamPool"]


class Pooled(Protocol):
    upstream: Upstream
    closed: bool

    @property
    def busy(self) -> bool: ...
    def close(self) -> None: ...


C = TypeVar("C", bound=Pooled)


class UpstreamPool(Generic[C]):
    """Idle connections per upstream, bounded so a burst does not pin sockets."""

    def __init__(self, max_idle_per_upstream: int = 64) -> None:
        self._idle: dict[Upstream, list[C]] = {}
        self._max_idle = max_idle_per_upstream
        self.open: set[C] = set()
        # Connections being opened, per upstream: each carries a request already routed there.
        self.connecting: dict[Upstream, int] = {}
        # The HTTP/2 side's streams and idle connections, so that one drain covers both.
        self.also_busy: Callable[[Upstream], int] | None = None
        self.also_drained: Callable[[Upstream], None] | None = None

    def busy(self, upstream: Upstream) -> int:
        """Requests given to `upstream` and not done: on its open connections, or waiting for
        one. Counted when asked (a drain polls it), so the request path pays nothing."""
        return self.connecting.get(upstream, 0) + sum(
            1 for conn in self.open if conn.busy and conn.upstream == upstream) + (
            self.also_busy(upstream) if self.also_busy is not None else 0)

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
        if self.also_drained is not None:
            self.also_drained(upstream)
        return left

    def take(self, upstream: Upstream) -> C | None:
        idle = self._idle.get(upstream)
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    def put(self, conn: C) -> None:
        idle = self._idle.get(conn.upstream)
        if idle is None:  # not setdefault: that makes a list on every call (the hot path)
            idle = self._idle[conn.upstream] = []
        if len(idle) >= self._max_idle:
            conn.close()
        else:
            idle.append(conn)

    def forget(self, conn: C) -> None:
        self.open.discard(conn)
        idle = self._idle.get(conn.upstream)
        if idle and conn in idle:
            idle.remove(conn)

    def close_all(self) -> None:
        for conn in list(self.open):
            conn.close()
        self._idle.clear()
