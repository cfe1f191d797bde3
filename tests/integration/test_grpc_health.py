"""`health: grpc` against real servers on loopback: grpcio with the standard health service,
grpcio without it, an HTTP/1.1 server, a closed port, a server that never answers; and a
process the local runtime supervises until its health service says SERVING."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from laneway.core.runtime import ProcessSpec
from laneway.runtime.local import LocalRuntime
from laneway.runtime.local.health import check_health
from laneway.runtime.local.process import free_port
from tests.integration.test_local_runtime import until

APP = str(Path(__file__).parents[1] / "apps" / "grpc_health_server.py")
CHECK = "grpc.health.v1.Health/Check"


class HealthServer:
    def __init__(self, with_health: bool = True) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self.health = health.HealthServicer()
        if with_health:
            health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def set(self, service: str, status: int) -> None:
        self.health.set(service, status)

    def stop(self) -> None:
        self.server.stop(None).wait()


@pytest.fixture
def grpc_server() -> Iterator[HealthServer]:
    server = HealthServer()
    yield server
    server.stop()


@pytest.fixture
def http1_server() -> Iterator[int]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """Accepts, reads whatever comes, never writes a byte."""
    connections: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()
    for writer in connections:
        writer.close()
    await server.wait_closed()


async def test_serving_is_healthy_and_every_other_status_says_what_it_is(
        grpc_server: HealthServer) -> None:
    port = grpc_server.port
    # grpcio's servicer reports the server as a whole ('') SERVING from the start.
    assert await check_health(port, "grpc") is None
    grpc_server.set("shop.Pricing", health_pb2.HealthCheckResponse.SERVING)
    assert await check_health(port, "grpc:shop.Pricing") is None
    grpc_server.set("shop.Pricing", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert await check_health(port, "grpc:shop.Pricing") == (
        f"{CHECK} for 'shop.Pricing' answered NOT_SERVING")
    grpc_server.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert await check_health(port, "grpc") == f"{CHECK} answered NOT_SERVING"
    grpc_server.set("shop.Pricing", health_pb2.HealthCheckResponse.SERVING)
    assert await check_health(port, "grpc:shop.Pricing") is None


async def test_an_unknown_service_name_is_reported_as_one(grpc_server: HealthServer) -> None:
    problem = await check_health(grpc_server.port, "grpc:shop.Pricnig")
    assert problem is not None
    assert problem.startswith(f"{CHECK} for 'shop.Pricnig' answered grpc-status 5 (NOT_FOUND)")
    assert "unknown service" in problem
    assert "health: grpc:shop.Pricnig" in problem


async def test_a_grpc_server_without_the_health_service_is_told_what_to_register() -> None:
    server = HealthServer(with_health=False)
    try:
        problem = await check_health(server.port, "grpc")
    finally:
        server.stop()
    assert problem == (f"{CHECK} answered grpc-status 12 (UNIMPLEMENTED): the server has no "
                       "health service; register grpc_health.v1 (grpcio-health-checking) or "
                       "use health: tcp")


async def test_an_http1_server_does_not_speak_http2(http1_server: int) -> None:
    assert await check_health(http1_server, "grpc") == (
        f"port {http1_server} does not speak HTTP/2 (an HTTP/1.1 server?)")
    # The same port passes the checks it does answer.
    assert await check_health(http1_server, "/healthz") is None
    assert await check_health(http1_server, "tcp") is None


async def test_nothing_listening_is_a_refused_connection() -> None:
    port = free_port()
    assert await check_health(port, "grpc:shop.Pricing") == f"port {port}: Connection refused"


async def test_a_server_that_never_answers_costs_the_timeout_and_no_more(
        silent_server: int) -> None:
    # The outer bound is generous: the check must end by its own deadline, not hang.
    problem = await asyncio.wait_for(check_health(silent_server, "grpc", timeout=0.3), 5)
    assert problem == f"{CHECK}: no answer within 0.3s"
    problem = await asyncio.wait_for(
        check_health(silent_server, "grpc:shop.Pricing", timeout=0.3), 5)
    assert problem == f"{CHECK} for 'shop.Pricing': no answer within 0.3s"


def _spec(unit: str, health: str, serving: str, timeout: float) -> ProcessSpec:
    service, _, rest = unit.partition("@")
    return ProcessSpec(unit=unit, service=service, sandbox=rest.partition("#")[0] or None,
                       argv=(sys.executable, APP), env=(("SERVING", serving),), cwd=None,
                       health=health, startup_timeout=timeout)


async def test_supervised_processes_are_ready_once_their_health_service_says_serving(
        tmp_path: Path) -> None:
    runtime = LocalRuntime(tmp_path / ".laneway")
    try:
        await runtime.start(_spec("pricing", "grpc:shop.Pricing", "shop.Pricing", 20))
        await runtime.start(_spec("pricing@sb#1", "grpc:shop.Pricing", "shop.Pricing", 20))
        # Listening and answering, but not for the name it is checked by: never ready.
        await runtime.start(_spec("stock", "grpc:shop.Stock", "shop.Pricing", 1))
        await until(lambda: runtime.states()["pricing"].phase == "ready", timeout=20)
        await until(lambda: runtime.states()["pricing@sb#1"].phase == "ready", timeout=20)
        await until(lambda: runtime.states()["stock"].phase == "unhealthy", timeout=20)
        message = runtime.states()["stock"].message
        assert f"{CHECK} for 'shop.Stock' answered grpc-status 5 (NOT_FOUND)" in message
        assert message.startswith("not healthy after 1s")
    finally:
        await runtime.close()
