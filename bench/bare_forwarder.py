"""A bare uvloop + httptools forwarder, the reference `../shared/PERFORMANCE.md` measured: what
Python reaches with no features at all. Requests are forwarded as they came (no head
rebuilt, no hop records, no timeouts, no limits, no `laneway-served-by`), to the fork when
`baggage` carries the key (one pre-compiled pattern), else to the baseline; one pooled
upstream connection per exchange, TCP_NODELAY. Not a router: GETs without bodies only, no
pipelining, no retries (a connection that fails closes the client's). It bounds what
laneway's router could gain by removing its own work; the bench prints laneway against it in
the same run.

    python bench/bare_forwarder.py --port P --upstream BASE --fork FORK
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket

import httptools
import uvloop

KEY = re.compile(rb"(?:^|,)[ \t]*laneway-key[ \t]*=[ \t]*bench0000000[ \t]*(?:;|,|$)")


class Upstream(asyncio.Protocol):
    def __init__(self, pool: list[Upstream]) -> None:
        self.pool = pool
        self.parser = httptools.HttpResponseParser(self)
        self.client: Client | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is not None and client.transport is not None \
                and not client.transport.is_closing():
            client.transport.write(data)
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        self.client = None
        self.pool.append(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool:  # an idle connection the upstream closed
            self.pool.remove(self)
        if self.client is not None and self.client.transport is not None:
            self.client.transport.close()  # its answer is lost with it


class Client(asyncio.Protocol):
    def __init__(self, base: tuple[int, list[Upstream]], fork: tuple[int, list[Upstream]]) -> None:
        self.base, self.fork = base, fork
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.keyed = False
        self.head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.head = data
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.keyed = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) == 7 and name.lower() == b"baggage" and KEY.search(value):
            self.keyed = True

    def on_message_complete(self) -> None:
        port, pool = self.fork if self.keyed else self.base
        if pool:
            up = pool.pop()
            up.client = self
            assert up.transport is not None
            up.transport.write(self.head)
            return
        asyncio.get_running_loop().create_task(self._connect(port, pool, self.head))

    async def _connect(self, port: int, pool: list[Upstream], head: bytes) -> None:
        _, up = await asyncio.get_running_loop().create_connection(
            lambda: Upstream(pool), "127.0.0.1", port)
        up.client = self
        assert up.transport is not None
        up.transport.write(head)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", type=int, required=True)
    parser.add_argument("--fork", type=int, required=True)
    args = parser.parse_args()
    base: tuple[int, list[Upstream]] = (args.upstream, [])
    fork: tuple[int, list[Upstream]] = (args.fork, [])
    server = await asyncio.get_running_loop().create_server(
        lambda: Client(base, fork), "127.0.0.1", args.port, reuse_address=True)
    print("ready", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main())
