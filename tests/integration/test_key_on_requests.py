"""laneway's own tools put a sandbox's key on a request by replacing the key it had, never by
adding a second `laneway-key` member: `laneway request -H "baggage: ..."`, MCP `send_request`
and the run proxy (HTTP_PROXY of `laneway run`). Each sends to a raw-socket upstream that records
the header lines it receives; the control API is real (loopback, port 0) over the in-memory
runtime. The upstream also records a hop for the request's trace, as a router would, marked
`key_conflict` when told to: that is how the tools' displays of a conflict are checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvicorn
from mcp import Client

from laneway.client import AsyncApiClient
from laneway.control.api import create_app
from laneway.control.plane import ControlPlane
from laneway.control.store import MemoryStore
from laneway.core.baggage import baggage_key
from laneway.core.feed import RoutesBroadcaster
from laneway.core.hoplog import HopLog
from laneway.core.hops import Hop, trace_context
from laneway.core.inject_proxy import InjectingProxy
from laneway.core.spec import parse_project
from laneway.mcp.server import build_server
from laneway.runtime.memory import MemoryRuntime

PROJECT = parse_project({"name": "shop", "services": {"web": {"run": "w", "port": 19401}}})
TOKEN = "test-token"
OTHER = "other0000000"
LANEWAY = str(Path(sys.executable).parent / "laneway")


@dataclass
class Upstream:
    """Answers 200 to every request and keeps each request's header lines."""

    control: ControlPlane
    url: str = ""
    heads: list[list[tuple[str, str]]] = field(default_factory=list)
    mark_conflict: bool = False

    def baggage(self) -> list[str]:
        """The `baggage` header lines of the last request, as received."""
        return [value for name, value in self.heads[-1] if name.lower() == "baggage"]

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        request_line, *lines = head.decode("latin-1").split("\r\n")[:-2]
        headers = [(n.strip(), v.strip()) for n, _, v in (ln.partition(":") for ln in lines)]
        self.heads.append(headers)
        trace_id, parent = trace_context(next((v.encode() for n, v in headers
                                               if n.lower() == "traceparent"), b""))
        key, _ = baggage_key(",".join(self.baggage()).encode())
        self.control.hops.add([Hop(time.time(), trace_id, parent, "web", key or "", "sb",
                                   "web@sb#1", 200, 1.0, "GET", request_line.split(" ")[1],
                                   key_conflict=self.mark_conflict)])
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()


@dataclass
class Env:
    api_url: str
    key: str
    upstream: Upstream


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    control = ControlPlane(PROJECT, MemoryStore(), MemoryRuntime(), RoutesBroadcaster(),
                           HopLog(1000))
    view, _ = control.apply_sandbox({"forks": [{"service": "web"}]}, name="sb")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = _Server(uvicorn.Config(create_app(control, TOKEN), log_level="warning",
                                    lifespan="off"))
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    upstream = Upstream(control)
    listener = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
    upstream.url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
    while not server.started:
        await asyncio.sleep(0.01)
    yield Env(f"http://127.0.0.1:{sock.getsockname()[1]}", view["routingKey"], upstream)
    listener.close()
    await listener.wait_closed()
    server.should_exit = True
    await task


async def _laneway(env: Env, *args: str) -> str:
    """`laneway ARGS --api URL` as a user types it, its output."""
    proc = await asyncio.create_subprocess_exec(
        LANEWAY, *args, "--api", env.api_url, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env={**os.environ, "LANEWAY_TOKEN": TOKEN})
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, out.decode()
    return out.decode()


async def test_laneway_request_replaces_the_key_it_was_given(env: Env) -> None:
    out = await _laneway(
        env, "request", "--sandbox", "sb", "-H",
        f"Baggage: a=1,laneway-key={OTHER};p=1,b=2", "-H", "x-team: 7", "GET",
        env.upstream.url + "/x")
    assert env.upstream.baggage() == [f"a=1,laneway-key={env.key},b=2"]
    assert ("x-team", "7") in env.upstream.heads[-1]
    assert "web@sb" in out
    await _laneway(env, "request", "--sandbox", "sb", "GET", env.upstream.url + "/y")
    assert env.upstream.baggage() == [f"laneway-key={env.key}"]


async def test_laneway_request_shows_a_hop_with_conflicting_keys(env: Env) -> None:
    env.upstream.mark_conflict = True
    out = await _laneway(env, "request", "--sandbox", "sb", "GET", env.upstream.url + "/x")
    assert f"{env.key} *" in out
    assert ("1 hop carried two different laneway-key members; the router used the last one, "
            "as OpenTelemetry does.") in out


async def test_mcp_send_request_replaces_the_key_and_reports_a_conflict(env: Env) -> None:
    env.upstream.mark_conflict = True
    api = AsyncApiClient(env.api_url, TOKEN)
    try:
        async with Client(build_server(api)) as client:
            result = await client.call_tool("send_request", {
                "url": env.upstream.url + "/x", "sandbox": "sb",
                "headers": {"baggage": f"laneway-key={OTHER},a=1", "x-team": "7"}})
            assert not result.is_error, result.content
            answer = result.structured_content
            assert answer is not None
            assert env.upstream.baggage() == [f"laneway-key={env.key},a=1"]
            assert answer["hops"][0]["key_conflict"] is True
            assert "carried two different laneway-key members" in answer["note"]
            trace = (await client.call_tool("get_trace",
                                            {"trace_id": answer["trace_id"]})).structured_content
            assert trace is not None
            assert trace["hops"][0]["key_conflict"] is True
            assert "the router used the last one" in trace["note"]
    finally:
        await api.aclose()


async def _through_proxy(proxy: InjectingProxy, target: str, header_lines: list[str]) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write((f"GET {target} HTTP/1.1\r\nhost: x\r\n" + "".join(
        f"{line}\r\n" for line in header_lines) + "\r\n").encode())
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


async def test_the_run_proxy_replaces_the_key_of_a_request(env: Env) -> None:
    proxy = InjectingProxy(env.key)
    await proxy.start()
    try:
        answer = await _through_proxy(proxy, env.upstream.url + "/x", [
            f"baggage: a=1,laneway-key={OTHER}", "Baggage: laneway-key=x;p, b=2", "x-a: 1"])
        assert answer.startswith(b"HTTP/1.1 200")
        assert env.upstream.baggage() == [f"a=1,laneway-key={env.key},b=2"]
        await _through_proxy(proxy, env.upstream.url + "/y", ["baggage: a=1"])
        assert env.upstream.baggage() == [f"laneway-key={env.key},a=1"]
        await _through_proxy(proxy, env.upstream.url + "/z", [])
        assert env.upstream.baggage() == [f"laneway-key={env.key}"]
    finally:
        await proxy.close()
