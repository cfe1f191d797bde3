"""A real grpcio test service (JSON messages through generic handlers, no generated code) and a
client helper, for the router's gRPC tests.

`/test.Echo/*` methods answer with the server's name, so a test can tell which process (the
baseline or a fork) served a call, and with the metadata they received."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc import aio

SERVICE = "test.Echo"


def encode(message: Any) -> bytes:
    return json.dumps(message).encode()


def decode(data: bytes) -> Any:
    return json.loads(data)


class EchoServer:
    """A grpc.aio server on 127.0.0.1 (port 0: any free port) named `name`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.server: aio.Server | None = None
        self.port = 0
        self.cancelled = asyncio.Event()  # set when a call of Slow/Bidi is cancelled
        self.seen_timeouts: list[float | None] = []  # time_remaining() at the start of calls
        self.calls = 0

    async def start(self, port: int = 0) -> EchoServer:
        self.server = aio.server()
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(
                self._unary, request_deserializer=decode, response_serializer=encode),
            "Fail": grpc.unary_unary_rpc_method_handler(
                self._fail, request_deserializer=decode, response_serializer=encode),
            "Slow": grpc.unary_unary_rpc_method_handler(
                self._slow, request_deserializer=decode, response_serializer=encode),
            "ServerStream": grpc.unary_stream_rpc_method_handler(
                self._server_stream, request_deserializer=decode, response_serializer=encode),
            "ClientStream": grpc.stream_unary_rpc_method_handler(
                self._client_stream, request_deserializer=decode, response_serializer=encode),
            "Bidi": grpc.stream_stream_rpc_method_handler(
                self._bidi, request_deserializer=decode, response_serializer=encode),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        await self.server.start()
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)

    def _answer(self, request: Any, context: aio.ServicerContext) -> dict[str, Any]:
        self.calls += 1
        metadata = {k: (v.hex() if isinstance(v, bytes) else v)
                    for k, v in (context.invocation_metadata() or ())}
        return {"server": self.name, "request": request, "metadata": metadata}

    async def _unary(self, request: Any, context: aio.ServicerContext) -> Any:
        self.seen_timeouts.append(context.time_remaining())
        await context.send_initial_metadata((("x-initial", "hello"),))
        context.set_trailing_metadata((("x-trailer", "bye"), ("x-blob-bin", b"\x00\xffbin")))
        return self._answer(request, context)

    async def _fail(self, request: Any, context: aio.ServicerContext) -> Any:
        context.set_trailing_metadata((("x-reason-bin", b"\x01\x02"), ("x-why", "because")))
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no stock: ünïcode ok")

    async def _slow(self, request: Any, context: aio.ServicerContext) -> Any:
        self.seen_timeouts.append(context.time_remaining())
        try:
            await asyncio.sleep(float(request.get("sleep", 10)))
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return self._answer(request, context)

    async def _server_stream(self, request: Any,
                             context: aio.ServicerContext) -> AsyncIterator[Any]:
        count = int(request.get("count", 3))
        size = int(request.get("size", 0))
        for i in range(count):
            yield {"server": self.name, "i": i, "pad": "x" * size}
            if request.get("pause"):
                await asyncio.sleep(float(request["pause"]))

    async def _client_stream(self, requests: AsyncIterator[Any],
                             context: aio.ServicerContext) -> Any:
        total = 0
        count = 0
        async for request in requests:
            total += int(request.get("n", 0))
            count += 1
        return {"server": self.name, "count": count, "total": total}

    async def _bidi(self, requests: AsyncIterator[Any],
                    context: aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for request in requests:
                yield {"server": self.name, "echo": request}
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


def method(channel: aio.Channel, name: str, kind: str = "unary_unary") -> Any:
    factory = getattr(channel, kind)
    return factory(f"/{SERVICE}/{name}", request_serializer=encode,
                   response_deserializer=decode)


def keyed(key: str | None) -> tuple[tuple[str, str], ...]:
    return (("baggage", f"laneway-key={key}"),) if key else ()
