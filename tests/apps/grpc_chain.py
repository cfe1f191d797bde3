"""One hop of a gRPC chain under real OpenTelemetry gRPC instrumentation (server and client,
grpc.aio), on $PORT, named $NAME; $NEXT (host:port, the next service's router) is called from
every method, so the routing key must travel as `baggage` metadata the SDK propagates.

- `/chain.Hop/Path` (unary): the servers the call reached, this one first.
- `/chain.Hop/Stream` (server streaming): $COUNT messages, each with the path of one call to the
  next hop's Path.
- `/chain.Hop/Slow` (unary): the last hop sleeps `sleep` seconds; every hop reports the deadline
  it saw (`time_remaining`).
- `/chain.Hop/Crash` (unary): a process whose $NAME is in `crash` exits at once, mid-call.

It serves the standard health service (grpc.health.v1, SERVING) for `health: grpc`; with
$CRASH_AT_START set it exits with status 1 before serving (a fork that cannot start).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2_grpc
from opentelemetry import trace
from opentelemetry.instrumentation.grpc import (
    GrpcAioInstrumentorClient,
    GrpcAioInstrumentorServer,
)
from opentelemetry.sdk.trace import TracerProvider

NAME = os.environ["NAME"]
NEXT = os.environ.get("NEXT", "")


def encode(message: Any) -> bytes:
    return json.dumps(message).encode()


def decode(data: bytes) -> Any:
    return json.loads(data)


class Hop:
    def __init__(self) -> None:
        self.channel = aio.insecure_channel(NEXT) if NEXT else None

    def _next(self, name: str) -> Any:
        assert self.channel is not None
        return self.channel.unary_unary(f"/chain.Hop/{name}", request_serializer=encode,
                                        response_deserializer=decode)

    async def _forward(self, name: str, request: Any, context: aio.ServicerContext) -> Any:
        try:
            return await self._next(name)(request, timeout=context.time_remaining())
        except aio.AioRpcError as exc:
            # The next hop's status and message, passed on as they are.
            await context.abort(exc.code(), exc.details() or "")

    async def path(self, request: Any, context: aio.ServicerContext) -> Any:
        rest = (await self._forward("Path", request, context))["path"] if self.channel else []
        return {"path": [NAME, *rest]}

    async def stream(self, request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
        for i in range(int(request.get("count", 3))):
            rest = (await self._forward("Path", request, context))["path"] \
                if self.channel else []
            yield {"i": i, "path": [NAME, *rest]}

    async def crash(self, request: Any, context: aio.ServicerContext) -> Any:
        if NAME in request.get("crash", []):
            os._exit(3)
        rest = (await self._forward("Crash", request, context))["path"] if self.channel else []
        return {"path": [NAME, *rest]}

    async def slow(self, request: Any, context: aio.ServicerContext) -> Any:
        seen = {NAME: context.time_remaining()}
        if self.channel is not None:
            seen.update((await self._forward("Slow", request, context))["seen"])
        else:
            await asyncio.sleep(float(request.get("sleep", 0)))
        return {"seen": seen}


async def main() -> None:
    if os.environ.get("CRASH_AT_START"):
        print(f"{NAME}: CRASH_AT_START is set, exiting", file=sys.stderr)
        sys.exit(1)
    trace.set_tracer_provider(TracerProvider())
    GrpcAioInstrumentorServer().instrument()
    GrpcAioInstrumentorClient().instrument()
    hop = Hop()
    server = aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("chain.Hop", {
        "Path": grpc.unary_unary_rpc_method_handler(
            hop.path, request_deserializer=decode, response_serializer=encode),
        "Stream": grpc.unary_stream_rpc_method_handler(
            hop.stream, request_deserializer=decode, response_serializer=encode),
        "Slow": grpc.unary_unary_rpc_method_handler(
            hop.slow, request_deserializer=decode, response_serializer=encode),
        "Crash": grpc.unary_unary_rpc_method_handler(
            hop.crash, request_deserializer=decode, response_serializer=encode),
    }),))
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{os.environ['PORT']}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main())
