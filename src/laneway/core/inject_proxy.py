"""The injecting HTTP proxy of a run: `HTTP_PROXY` for the test command.

Test clients that cannot set headers still route into the sandbox: every plain-HTTP request
they send through this proxy carries the run's routing key in its `baggage`, in place of any key
it had (and a fresh `traceparent` when it has none, so that every request of the run can be
traced). Each request is forwarded on its own connection and answered with
`connection: close`: simple and correct, and a test client's throughput is not what a run
measures. HTTPS (`CONNECT`) is tunnelled untouched: the key cannot be added inside TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from urllib.parse import urlsplit

from laneway.core.baggage import with_key

__all__ = ["InjectingProxy"]

_MAX_HEAD = 65536
MAX_RECORDED = 500  # requests a run keeps for `--diff`
MAX_RECORDED_BODY = 65536  # a larger (or chunked) body is not kept: that request is not replayed
_DROP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"proxy-authorization",
                   b"te", b"upgrade"})


class InjectingProxy:
    def __init__(self, routing_key: str) -> None:
        self.routing_key = routing_key
        self.requests = 0
        # What the test sent (before the key was added), for a diff against the baseline:
        # {method, url, headers, body (latin-1) or None when too large or chunked}.
        self.recorded: list[dict[str, object]] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._one(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                TimeoutError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)
        request_line, *header_lines = head[:-4].split(b"\r\n")
        parts = request_line.split(b" ")
        if len(parts) != 3:
            writer.write(_answer(400, "malformed request line"))
            return
        method, target, _ = parts
        if method == b"CONNECT":
            await self._tunnel(target.decode(), reader, writer)
            return
        url = urlsplit(target.decode("latin-1"))
        if url.scheme != "http" or not url.hostname:
            writer.write(_answer(400, "the laneway run proxy needs absolute http:// URLs "
                                      "(it is meant to be used as HTTP_PROXY)"))
            return
        self.requests += 1
        port = url.port or 80
        path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        lines = [method + b" " + path.encode("latin-1") + b" HTTP/1.1\r\n"]
        kept: list[tuple[str, str]] = []
        baggage: list[bytes] = []
        has_traceparent = False
        length = 0
        chunked = False
        for line in header_lines:
            name, _, value = line.partition(b":")
            lname = name.strip().lower()
            value = value.strip()
            if lname in _DROP:
                continue
            if lname == b"baggage":
                baggage.append(value)
                continue
            if lname == b"traceparent":
                has_traceparent = True
            elif lname == b"content-length":
                length = int(value)
            elif lname == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            lines.append(name.strip() + b": " + value + b"\r\n")
            if lname not in (b"traceparent", b"tracestate", b"content-length",
                             b"transfer-encoding", b"host"):
                kept.append((lname.decode("latin-1"), value.decode("latin-1")))
        record: dict[str, object] | None = None
        if len(self.recorded) < MAX_RECORDED:
            record = {"method": method.decode("latin-1"), "url": target.decode("latin-1"),
                      "headers": kept, "body": None if chunked or length > MAX_RECORDED_BODY
                      else ""}
            self.recorded.append(record)
        # One `baggage` header, with the run's key as its only `laneway-key` member: a test
        # that sends another key would otherwise split its request over two sandboxes.
        # latin-1 keeps every other byte as it came.
        joined = b",".join(baggage).decode("latin-1")
        lines.append(b"baggage: " + with_key(joined, self.routing_key).encode("latin-1")
                     + b"\r\n")
        if not has_traceparent:
            lines.append(f"traceparent: 00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
                         "\r\n".encode())
        lines.append(b"connection: close\r\n\r\n")
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(url.hostname, port), 10)
        except (OSError, TimeoutError) as exc:
            writer.write(_answer(502, f"cannot connect to {url.hostname}:{port}: {exc}"))
            return
        try:
            up_writer.write(b"".join(lines))
            if chunked:
                await _copy_chunked(reader, up_writer)
            elif length:
                body = await reader.readexactly(length)
                if record is not None and record["body"] is not None:
                    record["body"] = body.decode("latin-1")
                up_writer.write(body)
            await up_writer.drain()
            response_head = await asyncio.wait_for(up_reader.readuntil(b"\r\n\r\n"), 600)
            writer.write(_close_head(response_head))
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            up_writer.close()

    async def _tunnel(self, target: str, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        host, _, port = target.rpartition(":")
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port or 443))
        except (OSError, ValueError) as exc:
            writer.write(_answer(502, f"cannot connect to {target}: {exc}"))
            return
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def _copy_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        size_line = await reader.readuntil(b"\r\n")
        writer.write(size_line)
        size = int(size_line.split(b";")[0].strip(), 16)
        if size == 0:
            while (trailer := await reader.readuntil(b"\r\n")) != b"\r\n":
                writer.write(trailer)
            writer.write(b"\r\n")
            return
        writer.write(await reader.readexactly(size + 2))


def _close_head(head: bytes) -> bytes:
    status, *lines = head[:-4].split(b"\r\n")
    kept = [ln for ln in lines if ln.split(b":", 1)[0].strip().lower() not in
            (b"connection", b"keep-alive")]
    return b"\r\n".join([status, *kept, b"connection: close"]) + b"\r\n\r\n"


def _answer(status: int, message: str) -> bytes:
    body = f"laneway run proxy: {message}\n".encode()
    return (f"HTTP/1.1 {status} {'Bad Request' if status == 400 else 'Bad Gateway'}\r\n"
            f"content-type: text/plain\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode() + body


