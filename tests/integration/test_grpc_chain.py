"""Three gRPC services A → B → C under real OpenTelemetry gRPC instrumentation, each reached only
through its laneway router listener: every keyed call reaches the fork at every hop, unkeyed
calls the baselines, unary and server-streaming alike; deadlines shrink hop by hop; a crashed
fork is `UNAVAILABLE` with its reason all the way back to the client."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio

from laneway.core.hops import Hop
from laneway.core.routes import ForkRoute, RouteTable, Upstream
from laneway.router import Router, RouterSettings
from tests.grpcapps import decode, encode
from tests.upstreams import collect_hops

APP = Path(__file__).parents[1] / "apps" / "grpc_chain.py"
SERVICES = ("a", "b", "c")
K = "abc123def456"  # forks A, B and C (sandbox sb-k)
K2 = "zzz999yyy888"  # forks only B (sandbox sb-k2)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Chain:
    router: Router
    ports: dict[str, int]  # service -> its router listener
    procs: dict[str, subprocess.Popen[bytes]]
    upstreams: dict[str, int]
    logs: Path
    hops: list[Hop] = field(default_factory=list)

    async def settled_hops(self, count: int) -> list[Hop]:
        for _ in range(250):
            self.router.recorder.flush()
            if len(self.hops) >= count:
                break
            await asyncio.sleep(0.02)
        return list(self.hops)


async def _wait_grpc(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    for _ in range(200):
        if proc.poll() is not None:
            raise AssertionError(f"{log.name} exited: {log.read_text(errors='replace')}")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{log.name} never listened")


@pytest.fixture
async def chain(tmp_path: Path) -> AsyncIterator[Chain]:
    hops: list[Hop] = []
    router = Router(RouterSettings(), hop_sink=collect_hops(hops))
    ports = {s: await router.listen(s, 0, protocol="grpc") for s in SERVICES}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    upstreams: dict[str, int] = {}
    for service in SERVICES:
        nxt = {"a": "b", "b": "c"}.get(service)
        for unit in (service, f"{service}@sb-k", "b@sb-k2") if service == "b" else \
                (service, f"{service}@sb-k"):
            port = _free_port()
            env = {**os.environ, "PORT": str(port), "NAME": unit,
                   "OTEL_PROPAGATORS": "tracecontext,baggage"}
            if nxt:
                env["NEXT"] = f"127.0.0.1:{ports[nxt]}"
            log = tmp_path / f"{unit}.log"
            with log.open("wb") as out:
                procs[unit] = subprocess.Popen([sys.executable, str(APP)], env=env, stdout=out,
                                               stderr=subprocess.STDOUT)
            upstreams[unit] = port
    try:
        await asyncio.gather(*[_wait_grpc(upstreams[u], p, tmp_path / f"{u}.log")
                               for u, p in procs.items()])
        table = RouteTable(version=1, baseline={
            s: Upstream("127.0.0.1", upstreams[s]) for s in SERVICES})
        for service in SERVICES:
            table.forks[service] = {K: ForkRoute(
                service, "sb-k", Upstream("127.0.0.1", upstreams[f"{service}@sb-k"]), True,
                fork=f"{service}@sb-k#1")}
        table.forks["b"][K2] = ForkRoute("b", "sb-k2",
                                         Upstream("127.0.0.1", upstreams["b@sb-k2"]), True,
                                         fork="b@sb-k2#1")
        router.apply(table)
        yield Chain(router, ports, procs, upstreams, tmp_path, hops)
    finally:
        await router.close()
        for proc in procs.values():
            proc.kill()
            proc.wait()


def _call(channel: aio.Channel, name: str, kind: str = "unary_unary") -> Any:
    return getattr(channel, kind)(f"/chain.Hop/{name}", request_serializer=encode,
                                  response_deserializer=decode)


def _meta(key: str | None, trace_id: str) -> tuple[tuple[str, str], ...]:
    tp = ("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01")
    return (tp, ("baggage", f"laneway-key={key};ttl=60, team=x")) if key else (tp,)


async def test_keyed_calls_reach_the_forks_at_every_hop(chain: Chain) -> None:
    async with aio.insecure_channel(f"127.0.0.1:{chain.ports['a']}") as channel:
        path = _call(channel, "Path")
        traces = {variant: secrets.token_hex(16) for variant in ("k", "none", "k2")}
        keyed = await path({}, metadata=_meta(K, traces["k"]), timeout=10)
        plain = await path({}, metadata=_meta(None, traces["none"]), timeout=10)
        only_b = await path({}, metadata=_meta(K2, traces["k2"]), timeout=10)
        assert keyed["path"] == ["a@sb-k", "b@sb-k", "c@sb-k"]
        assert plain["path"] == ["a", "b", "c"]
        assert only_b["path"] == ["a", "b@sb-k2", "c"]
        many = await asyncio.gather(*[path({}, metadata=_meta(K, secrets.token_hex(16)),
                                           timeout=10) for _ in range(20)])
        assert all(m["path"] == ["a@sb-k", "b@sb-k", "c@sb-k"] for m in many)

        stream = _call(channel, "Stream", "unary_stream")
        messages = [m async for m in stream({"count": 5}, metadata=_meta(K, secrets.token_hex(16)),
                                            timeout=10)]
        assert [m["path"] for m in messages] == [["a@sb-k", "b@sb-k", "c@sb-k"]] * 5

    hops = await chain.settled_hops(9 + 60 + 5 * 2 + 1)
    by_trace = {t: [(h.service, h.destination, h.grpc_status) for h in hops if h.trace_id == t]
                for t in traces.values()}
    # The SDK carried the trace id on, so the router's records join into each call's path.
    assert sorted(by_trace[traces["k"]]) == [("a", "sb-k", 0), ("b", "sb-k", 0), ("c", "sb-k", 0)]
    assert sorted(by_trace[traces["none"]]) == [("a", "baseline", 0), ("b", "baseline", 0),
                                                ("c", "baseline", 0)]
    assert sorted(by_trace[traces["k2"]]) == [("a", "baseline", 0), ("b", "sb-k2", 0),
                                              ("c", "baseline", 0)]
    assert all(h.path.startswith("/chain.Hop/") for h in hops)


async def test_the_deadline_shrinks_at_every_hop_and_expires_as_deadline_exceeded(
        chain: Chain) -> None:
    async with aio.insecure_channel(f"127.0.0.1:{chain.ports['a']}") as channel:
        slow = _call(channel, "Slow")
        seen = (await slow({"sleep": 0}, metadata=_meta(K, secrets.token_hex(16)),
                           timeout=5))["seen"]
        # Each hop sees about the client's 5 s or less. (grpcio rounds the grpc-timeout it sends
        # up to a few significant digits, so a hop may see a few ms more than its caller.)
        assert 4 < seen["c@sb-k"] < 5.05
        assert 4 < seen["b@sb-k"] < 5.05
        assert seen["c@sb-k"] <= seen["b@sb-k"] + 0.05
        assert seen["b@sb-k"] <= seen["a@sb-k"] + 0.05
        with pytest.raises(aio.AioRpcError) as err:
            await slow({"sleep": 3}, metadata=_meta(K, secrets.token_hex(16)), timeout=0.5)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_crashed_fork_answers_unavailable_with_its_reason(chain: Chain) -> None:
    chain.procs["b@sb-k"].kill()
    chain.procs["b@sb-k"].wait()
    route = chain.router.table.forks["b"][K]
    chain.router.apply(RouteTable(
        version=2, baseline=dict(chain.router.table.baseline),
        forks={**chain.router.table.forks, "b": {
            **chain.router.table.forks["b"],
            K: ForkRoute("b", "sb-k", None, False, fork=route.fork,
                         reason="fork b@sb-k#1 exited with status -9 (crashed); see "
                                "`laneway sandbox logs sb-k`")}}))
    async with aio.insecure_channel(f"127.0.0.1:{chain.ports['a']}") as channel:
        with pytest.raises(aio.AioRpcError) as err:
            await _call(channel, "Path")({}, metadata=_meta(K, secrets.token_hex(16)),
                                         timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "b@sb-k#1" in (err.value.details() or "")
        assert "crashed" in (err.value.details() or "")
        # Unkeyed calls are untouched by the sandbox's trouble.
        plain = await _call(channel, "Path")({}, metadata=_meta(None, secrets.token_hex(16)),
                                             timeout=10)
        assert plain["path"] == ["a", "b", "c"]
