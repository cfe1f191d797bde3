"""A tunnel after `101 Switching Protocols` (WebSocket): raw bytes both ways.

Backpressure runs both ways: when the client's output buffer is full the upstream is no longer
read, and the reverse (`ClientConnection.pause_writing`, `UpstreamConnection.pause_writing`), so
a peer that does not read costs at most a transport's high-water mark, not the other side's whole
stream. A tunnel idle in both directions for `tunnel_timeout` is closed by the sweep.
"""

from __future__ import annotations

import asyncio

__all__ = ["Tunnel"]


class Tunnel:
    __slots__ = ("client", "last_activity", "upstream")

    def __init__(self, client: asyncio.Transport, upstream: asyncio.Transport,
                 now: float) -> None:
        self.client = client
        self.upstream = upstream
        self.last_activity = now

    def from_client(self, data: bytes, now: float) -> None:
        self.last_activity = now
        if not self.upstream.is_closing():
            self.upstream.write(data)

    def from_upstream(self, data: bytes, now: float) -> None:
        self.last_activity = now
        if not self.client.is_closing():
            self.client.write(data)

    def close(self) -> None:
        """One side ended: end the other, after what it has buffered is written."""
        for transport in (self.client, self.upstream):
            if not transport.is_closing():
                transport.close()

    def abort(self) -> None:
        for transport in (self.client, self.upstream):
            transport.abort()
