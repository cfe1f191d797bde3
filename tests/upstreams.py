"""A small but real HTTP/1.1 origin server for router tests, written on asyncio streams so each
test can choose the framing (content-length, chunked, close-delimited), delays and upgrades."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable

from laneway.core.hops import Hop, HopRow


class TestUpstream:
    """Answers `GET /anything` with JSON naming itself and echoing what it received.

    Special paths: `/chunked` (chunked body), `/close` (close-delimited body), `/slow?ms=N`,
    `/big?kb=N`, `/upgrade` (101 then echo), `/echo` (returns the request body).
    """

    __test__ = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.port = 0
        self.requests: list[dict[str, object]] = []
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 1)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers.append((name.strip().lower(), value.strip()))
        hmap = dict(headers)
        body = b""
        if "content-length" in hmap:
            body = await reader.readexactly(int(hmap["content-length"]))
        elif hmap.get("transfer-encoding") == "chunked":
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
        self.requests.append({"method": method, "target": target, "headers": headers,
                              "body": body})
        path, _, query = target.partition("?")
        params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        if path == "/slow":
            await asyncio.sleep(int(params.get("ms", "100")) / 1000)
        if path == "/upgrade":
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: echo\r\n"
                         b"connection: upgrade\r\n\r\n")
            await writer.drain()
            while data := await reader.read(65536):
                writer.write(data.upper())
                await writer.drain()
            return False
        if path == "/echo":
            payload = body
        elif path == "/big":
            payload = b"x" * (int(params.get("kb", "64")) * 1024)
        else:
            payload = json.dumps({"server": self.name, "method": method, "target": target,
                                  "headers": headers, "body": body.decode("latin-1")}).encode()
        if path == "/chunked":
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n"
                         b"content-type: application/json\r\n\r\n")
            half = len(payload) // 2
            for part in (payload[:half], payload[half:]):
                writer.write(b"%x\r\n%b\r\n" % (len(part), part))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
        elif path == "/close":
            writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + payload)
            await writer.drain()
            return False
        else:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                         b"content-length: %d\r\nx-upstream: %b\r\n"
                         b"keep-alive: timeout=5\r\n\r\n" % (len(payload), self.name.encode()))
            if method != "HEAD":
                writer.write(payload)
        await writer.drain()
        return hmap.get("connection", "").lower() != "close"


def collect_hops(into: list[Hop]) -> Callable[[list[HopRow]], None]:
    """A router's hop sink for tests: each record it hands over (a row) read back as a `Hop`."""
    return lambda rows: into.extend(Hop(*row) for row in rows)
