"""Timeouts without a timer per request: a coarse clock and one sweep over client connections.

Connections stamp `clock.now` (an attribute read) on every event instead of calling
`time.monotonic()`; a sweeper updates the clock and asks every client connection, a few times
per second, whether a timeout has passed. The client connection knows which timeout applies in
its state (`ClientConnection.check_timeouts`):

- accepted, no byte yet: `request_head_timeout`, then closed silently;
- idle between requests: `keepalive_timeout`, then closed silently;
- request head arriving: `request_head_timeout`, total time from its first byte, then `408`;
- request body arriving while the router reads: `client_timeout` since the client's last byte,
  then `408` (or a close once a response began);
- response waiting for the client to read: `client_timeout` since its write buffer filled,
  then the connection is aborted;
- waiting for the upstream: `upstream_timeout` since progress in either direction, then `504`
  (or a close once a response began);
- tunnel after `101`: `tunnel_timeout` since a byte either way, then both sides close;
- closing with output not flushed: `client_timeout`, then aborted, so memory comes back.

The sweep is O(client connections) per tick; at 10,000 connections and 4 ticks a second that is
a few milliseconds of work a second, and nothing on the request path.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import time
from collections.abc import Callable, Iterable
from typing import Protocol

__all__ = ["Clock", "Served", "Sweeper", "Timed", "release_memory"]


class Clock:
    """Monotonic seconds, updated by the sweeper; good to a fraction of the smallest timeout."""

    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = time.monotonic()

    def tick(self) -> float:
        self.now = time.monotonic()
        return self.now


class Timed(Protocol):
    def check_timeouts(self, now: float) -> None: ...


class Served(Timed, Protocol):
    """A client connection of a listener (HTTP/1.1 or HTTP/2): swept, and closed at the end."""

    def close(self) -> None: ...


class Sweeper:
    def __init__(self, clock: Clock, interval: float,
                 connections: Callable[[], Iterable[Timed]]) -> None:
        self.clock = clock
        self.interval = interval
        self._connections = connections
        self._handle: asyncio.TimerHandle | None = None
        self._peak = 0

    @property
    def running(self) -> bool:
        return self._handle is not None

    def start(self) -> None:
        if self._handle is None:
            self._tick()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        now = self.clock.tick()
        connections = list(self._connections())
        for conn in connections:
            conn.check_timeouts(now)
        count = len(connections)
        self._peak = max(self._peak, count)
        if self._peak - count >= TRIM_AFTER:
            # Many connections went away (abuse ended, a burst passed): hand the freed heap
            # back to the system instead of keeping it as the process's high-water mark.
            self._peak = count
            release_memory()
        self._handle = asyncio.get_running_loop().call_later(self.interval, self._tick)


TRIM_AFTER = 500  # connections gone since the peak before memory is handed back


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None
    return trim


_TRIM = _malloc_trim()


def release_memory() -> None:
    """Return free heap pages to the system (glibc's malloc_trim; elsewhere a no-op)."""
    gc.collect()
    if _TRIM is not None:
        _TRIM(0)


def sweep_interval(*timeouts: float) -> float:
    """A quarter of the smallest timeout, between 50 ms and 1 s."""
    return max(0.05, min(1.0, min(timeouts) / 4))
