"""HTTP/2 connections from the router to upstreams (gRPC and h2c services), pooled and shared.

One `H2Upstream` carries many streams at once, up to the upstream's `SETTINGS_MAX_CONCURRENT_
STREAMS`; the `H2Pool` opens another connection to the same upstream only when every open one is
full or going away. Pooling on purpose, as the issue asks: a gRPC server expects few long-lived
connections with many streams, not a connection per call.

Each stream belongs to a `StreamPeer` (the call in `h2client.py`, or an HTTP/1.1 client's
exchange), which the connection calls back for the upstream's headers, data, trailers, end,
reset and loss. Flow control is the peer's: received DATA is acknowledged (the upstream's window
re-opened) only once the peer has passed it on, so what the router holds per connection is
bounded by the windows it grants (`STREAM_WINDOW`, `CONNECTION_WINDOW`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Any, Protocol, cast

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings
from hpack import Encoder

from laneway.core.routes import Upstream
from laneway.router.responses import connect_failure
from laneway.router.timeouts import Clock

__all__ = ["CONNECTION_WINDOW", "STREAM_WINDOW", "FrameGuard", "H2Pool", "H2Upstream",
           "StreamPeer", "new_connection", "take"]

Headers = list[tuple[bytes, bytes]]

# What the router lets one upstream stream and one upstream connection send ahead of what the
# clients have read: the bound on response bytes held per stream and per connection. The
# connection's window is larger than a stream's, so that one slow client cannot stall every
# other stream sharing the connection (head-of-line blocking on the connection window).
STREAM_WINDOW = 256 * 1024
CONNECTION_WINDOW = 8 * 1024 * 1024
DEFAULT_MAX_STREAMS = 100  # until the upstream's SETTINGS say otherwise (RFC 9113 §6.5.2)


class StreamPeer(Protocol):
    """What an upstream stream reports to, and who acknowledges its data."""

    def up_headers(self, headers: Headers, ended: bool) -> None: ...
    def up_informational(self, headers: Headers) -> None: ...
    def up_data(self, data: bytes, flow_length: int) -> None: ...
    def up_trailers(self, headers: Headers) -> None: ...
    def up_end(self) -> None: ...
    def up_reset(self, code: int) -> None: ...
    def up_lost(self, message: str, refused: bool) -> None: ...
    def up_window(self) -> None: ...


class PlainEncoder(Encoder):
    """HPACK without Huffman coding: hpack's Huffman encoder is a pure-Python loop over every
    byte of every new header value, the largest single cost of a gRPC call in the router; on
    the loopback and LAN links the router serves, a few more header bytes cost less than that
    CPU. Indexing (the dynamic table) still makes repeated fields one byte."""

    def encode(self, headers: Any, huffman: bool = False) -> bytes:
        return super().encode(headers, huffman=False)


def take(queue: deque[bytes], window: int) -> bytes:
    """The next piece of `queue` that fits in `window` (> 0), removed from the queue."""
    chunk = queue[0]
    if len(chunk) > window:
        queue[0] = chunk[window:]
        return chunk[:window]
    queue.popleft()
    return chunk


def h2_config(client_side: bool) -> H2Configuration:
    """Outbound headers are either headers h2 validated inbound or the router's own: checking
    and normalising them again is work for nothing (it was a fifth of a call's CPU)."""
    return H2Configuration(client_side=client_side, header_encoding=None,
                           validate_outbound_headers=False, normalize_outbound_headers=False)


def new_connection(client_side: bool) -> H2Connection:
    conn = H2Connection(h2_config(client_side))
    conn.encoder = PlainEncoder()
    return conn


class FrameGuard:
    """Frame lengths checked as the bytes arrive.

    h2 checks a frame's length against SETTINGS_MAX_FRAME_SIZE only once the whole frame is
    buffered, so a peer that announces a 16 MiB frame would make it hold 16 MiB per connection.
    The guard walks the frame headers of each read (9 bytes, then the announced length) and
    says when one is larger than the router's limit, before h2 buffers anything."""

    __slots__ = ("_head", "_left", "_skip", "max_frame")

    def __init__(self, skip: int, max_frame: int = 16384) -> None:
        self._skip = skip  # the preface, which is not a frame
        self._left = 0  # bytes of the current frame's payload still to come
        self._head = b""  # a frame header split across reads
        self.max_frame = max_frame

    def feed(self, data: bytes) -> bool:
        pos = 0
        end = len(data)
        if self._skip:
            pos = min(end, self._skip)
            self._skip -= pos
        while pos < end:
            if self._left:
                step = min(end - pos, self._left)
                pos += step
                self._left -= step
                continue
            need = 9 - len(self._head)
            head = self._head + data[pos:pos + need]
            pos += need
            if len(head) < 9:
                self._head = head
                return True
            self._head = b""
            length = int.from_bytes(head[:3], "big")
            if length > self.max_frame:
                return False
            self._left = length
        return True


class Waiter(Protocol):
    def up_connected(self, conn: H2Upstream) -> None: ...
    def up_connect_failed(self, status: int, code: str, message: str) -> None: ...


class H2Upstream(asyncio.Protocol):
    def __init__(self, pool: H2Pool, upstream: Upstream, clock: Clock,
                 max_header_bytes: int) -> None:
        self.pool = pool
        self.upstream = upstream
        self.clock = clock
        self.h2 = new_connection(client_side=True)
        self.max_header_bytes = max_header_bytes
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, StreamPeer] = {}
        self.closed = False
        self.going_away = False
        self.max_streams = DEFAULT_MAX_STREAMS
        self.last_activity = clock.now
        self.waiting: list[Waiter] = []  # calls given to this connection while it connects
        self.flush_scheduled = False
        self.guard = FrameGuard(0)
        self.spoke = False  # the upstream has sent something

    @property
    def full(self) -> bool:
        return self.going_away or self.closed or \
            len(self.streams) + len(self.waiting) >= self.max_streams

    def wait(self, waiter: Waiter) -> None:
        """Open `waiter`'s stream as soon as the connection is up (now, if it is)."""
        if self.transport is not None:
            waiter.up_connected(self)
        else:
            self.waiting.append(waiter)

    def connect_failed(self, status: int, code: str, message: str) -> None:
        self.closed = True
        self.pool.forget(self)
        waiting, self.waiting = self.waiting, []
        for waiter in waiting:
            waiter.up_connect_failed(status, code, message)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        h2 = self.h2
        h2.local_settings = Settings(client=True, initial_values={
            SettingCodes.ENABLE_PUSH: 0,
            SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            SettingCodes.MAX_HEADER_LIST_SIZE: self.max_header_bytes,
        })
        h2.initiate_connection()
        h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.flush()
        # Streams may follow the preface at once (RFC 9113 §3.4): no wait for the SETTINGS.
        waiting, self.waiting = self.waiting, []
        for waiter in waiting:
            waiter.up_connected(self)

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.clock.now
        if not self.spoke and data[:5] == b"HTTP/":
            # An HTTP/1.1 server answering the preface (most say 400 and close).
            if self.transport is not None:
                self.transport.close()
            self._lose("answered in HTTP/1.1, not HTTP/2: it is not a gRPC or h2c server "
                       "(declare protocol: http for it)")
            return
        self.spoke = True
        if not self.guard.feed(data):
            self.h2.close_connection(ErrorCodes.FRAME_SIZE_ERROR)
            self.flush()
            if self.transport is not None:
                self.transport.close()
            self._lose("sent an HTTP/2 frame larger than SETTINGS_MAX_FRAME_SIZE")
            return
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as exc:
            self.flush()  # h2 has queued the GOAWAY that says why
            self._lose(f"broke the HTTP/2 protocol ({type(exc).__name__}: {exc})")
            return
        streams = self.streams
        for event in events:
            # h2 reports END_STREAM twice: on the frame's event and as a StreamEnded after it;
            # only the StreamEnded ends the stream here.
            if isinstance(event, DataReceived):
                peer = streams.get(event.stream_id)
                if peer is not None:
                    peer.up_data(event.data, event.flow_controlled_length)
                else:
                    self.ack(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, ResponseReceived):
                peer = streams.get(event.stream_id)
                if peer is not None:
                    peer.up_headers(event.headers,
                                    event.stream_ended is not None)
            elif isinstance(event, TrailersReceived):
                peer = streams.get(event.stream_id)
                if peer is not None:
                    peer.up_trailers(event.headers)
            elif isinstance(event, StreamEnded):
                peer = streams.pop(event.stream_id, None)
                if peer is not None:
                    peer.up_end()
            elif isinstance(event, InformationalResponseReceived):
                peer = streams.get(event.stream_id)
                if peer is not None:
                    peer.up_informational(event.headers)
            elif isinstance(event, StreamReset):
                peer = streams.pop(event.stream_id, None)
                if peer is not None:
                    peer.up_reset(int(event.error_code or 0))
            elif isinstance(event, WindowUpdated):
                if event.stream_id:
                    peer = streams.get(event.stream_id)
                    if peer is not None:
                        peer.up_window()
                else:
                    for peer in list(streams.values()):
                        peer.up_window()
            elif isinstance(event, RemoteSettingsChanged):
                changed = event.changed_settings.get(SettingCodes.MAX_CONCURRENT_STREAMS)
                if changed is not None:
                    self.max_streams = int(changed.new_value)
                if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                    for peer in list(streams.values()):
                        peer.up_window()
            elif isinstance(event, ConnectionTerminated):
                self._goaway(int(event.last_stream_id or 0), int(event.error_code or 0))
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lose("closed the HTTP/2 connection (did the process crash? `laneway status` "
                   "says; `laneway sandbox logs` shows a fork's output)")

    def pause_writing(self) -> None:
        pass  # request bodies are bounded by the upstream's flow-control windows

    def resume_writing(self) -> None:
        pass

    # streams, used by the peers

    def open_stream(self, peer: StreamPeer, headers: Headers, end_stream: bool) -> int:
        stream_id = self.h2.get_next_available_stream_id()
        self.h2.send_headers(stream_id, headers, end_stream=end_stream)
        self.streams[stream_id] = peer
        self.schedule_flush()
        return stream_id

    def send_window(self, stream_id: int) -> int:
        try:
            return min(self.h2.local_flow_control_window(stream_id),
                       self.h2.max_outbound_frame_size)
        except ProtocolError:
            return 0  # the stream is closed

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        self.h2.send_data(stream_id, data, end_stream=end_stream)

    def end_stream(self, stream_id: int) -> None:
        self.h2.end_stream(stream_id)

    def send_trailers(self, stream_id: int, headers: Headers) -> None:
        self.h2.send_headers(stream_id, headers, end_stream=True)

    def reset(self, stream_id: int, code: int = ErrorCodes.CANCEL) -> None:
        if self.streams.pop(stream_id, None) is not None and not self.closed:
            with contextlib.suppress(ProtocolError):  # already closed on the wire
                self.h2.reset_stream(stream_id, code)
            self.flush()
        self._maybe_idle()

    def release(self, stream_id: int) -> None:
        """The peer is done with the stream (it ended both ways)."""
        self.streams.pop(stream_id, None)
        self._maybe_idle()

    def ack(self, size: int, stream_id: int) -> None:
        """Re-open the upstream's window for `size` bytes passed on (or dropped)."""
        if size and not self.closed:
            # The stream closed meanwhile: nothing to re-open.
            with contextlib.suppress(ProtocolError):
                self.h2.acknowledge_received_data(size, stream_id)

    def flush(self) -> None:
        self.flush_scheduled = False
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    def schedule_flush(self) -> None:
        """Write what the streams queued once this turn of the loop is done: one system call
        for every stream a client read touched, not one per stream."""
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def close(self) -> None:
        if not self.closed:
            try:
                self.h2.close_connection()
                self.flush()
            except ProtocolError:
                pass
            if self.transport is not None:
                self.transport.close()
            self._lose("lost its connection (the router closed it)")

    # connection state

    def _goaway(self, last_stream_id: int, code: int) -> None:
        self.going_away = True
        self.pool.forget(self)
        for stream_id in [s for s in self.streams if s > last_stream_id]:
            # Never processed by the upstream (RFC 9113 §6.8): safe to send again elsewhere.
            peer = self.streams.pop(stream_id)
            peer.up_lost(f"refused the stream (GOAWAY, error {code})", refused=True)
        self._maybe_idle()

    def _maybe_idle(self) -> None:
        if self.going_away and not self.streams and not self.closed:
            self.close()

    def _lose(self, message: str) -> None:
        self.closed = True
        self.going_away = True
        self.pool.forget(self)
        waiting, self.waiting = self.waiting, []
        for waiter in waiting:
            waiter.up_connect_failed(502, "upstream_closed", message)
        streams, self.streams = self.streams, {}
        for peer in streams.values():
            peer.up_lost(message, refused=False)


class H2Pool:
    """Open HTTP/2 connections per upstream; a stream goes to the first one with room."""

    def __init__(self) -> None:
        self._conns: dict[Upstream, list[H2Upstream]] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def stream(self, upstream: Upstream, waiter: Waiter, clock: Clock, max_header_bytes: int,
               connect_timeout: float) -> None:
        """Give `waiter` a connection to `upstream` with room for one more stream: an open one,
        one being opened, or a new one."""
        conn = self.pick(upstream)
        if conn is None:
            conn = H2Upstream(self, upstream, clock, max_header_bytes)
            self.add(conn)
            task = asyncio.get_running_loop().create_task(
                self._connect(conn, connect_timeout), name="laneway-h2-connect")
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        conn.wait(waiter)

    async def _connect(self, conn: H2Upstream, timeout: float) -> None:
        up = conn.upstream
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.create_connection(lambda: conn, up.host, up.port),
                                   timeout)
        except (TimeoutError, OSError) as exc:
            conn.connect_failed(*connect_failure(exc, up.host, up.port, timeout))

    def pick(self, upstream: Upstream) -> H2Upstream | None:
        for conn in self._conns.get(upstream, ()):
            if not conn.full:
                return conn
        return None

    def add(self, conn: H2Upstream) -> None:
        self._conns.setdefault(conn.upstream, []).append(conn)

    def forget(self, conn: H2Upstream) -> None:
        conns = self._conns.get(conn.upstream)
        if conns and conn in conns:
            conns.remove(conn)
            if not conns:
                del self._conns[conn.upstream]

    def busy(self, upstream: Upstream) -> int:
        return sum(len(c.streams) for c in self._conns.get(upstream, ()))

    def close_idle(self, upstream: Upstream) -> None:
        for conn in list(self._conns.get(upstream, ())):
            if not conn.streams:
                conn.close()

    def close_all(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for conns in list(self._conns.values()):
            for conn in list(conns):
                conn.close()
        self._conns.clear()
