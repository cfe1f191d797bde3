"""A small but real h2c origin (HTTP/2 with prior knowledge only, on the h2 state machine), for
the router's `protocol: h2c` tests: it answers every request with JSON naming itself and what it
received (method, path, headers, body size), `/echo` with the body itself, `/empty` with 204."""

from __future__ import annotations

import asyncio
import contextlib
import json

import h2.config
import h2.connection
import h2.events


class H2Origin:
    __test__ = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self.requests: list[dict[str, object]] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> H2Origin:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        bodies: dict[int, bytearray] = {}
        heads: dict[int, dict[bytes, bytes]] = {}
        pending: dict[int, bytes] = {}  # response bodies waiting for window
        try:
            while data := await reader.read(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.RequestReceived):
                        heads[event.stream_id] = dict(event.headers)
                        bodies[event.stream_id] = bytearray()
                    elif isinstance(event, h2.events.DataReceived):
                        bodies[event.stream_id] += event.data
                        conn.acknowledge_received_data(event.flow_controlled_length,
                                                       event.stream_id)
                    elif isinstance(event, h2.events.StreamEnded):
                        answer = self._answer(conn, event.stream_id, heads.pop(event.stream_id),
                                              bytes(bodies.pop(event.stream_id)))
                        if answer is not None:
                            pending[event.stream_id] = answer
                for sid, waiting in list(pending.items()):
                    rest = waiting
                    window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                    while rest and window > 0:
                        conn.send_data(sid, rest[:window])
                        rest = rest[window:]
                        window = min(conn.local_flow_control_window(sid),
                                     conn.max_outbound_frame_size)
                    if rest:
                        pending[sid] = rest
                    else:
                        conn.end_stream(sid)
                        del pending[sid]
                writer.write(conn.data_to_send())
                await writer.drain()
        except (ConnectionError, h2.exceptions.ProtocolError):
            pass
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    def _answer(self, conn: h2.connection.H2Connection, sid: int, head: dict[bytes, bytes],
                body: bytes) -> bytes | None:
        path = head[b":path"].decode()
        record = {"server": self.name, "method": head[b":method"].decode(), "path": path,
                  "headers": {k.decode(): v.decode() for k, v in head.items()},
                  "body_bytes": len(body)}
        self.requests.append(record)
        if path == "/empty":
            conn.send_headers(sid, [(b":status", b"204")], end_stream=True)
            return None
        out = body if path == "/echo" else json.dumps(record).encode()
        conn.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/json"),
                                (b"x-origin", self.name.encode())])
        return b"" if record["method"] == "HEAD" else out
