"""A three-service chain A → B → C under real OpenTelemetry propagation, each service reached only
through its own laneway router: the routing key must reach every hop the way the SDKs carry it.

A is a Starlette app served by uvicorn under opentelemetry-instrumentation-asgi (incoming) and
opentelemetry-instrumentation-httpx (outgoing), global propagator TraceContext + W3C Baggage,
SDK TracerProvider (tests/apps/otel/hop_a.py). B is a plain Node `http` server propagating with
OpenTelemetry-JS's W3CTraceContextPropagator + W3CBaggagePropagator (tests/apps/otel/hop_b.js, at
the versions pinned by tests/unit/test_baggage_sdks.py, from the same npm cache folder; skipped
when node, npm or the registry is not there). C is tests/apps/chain.py. Every service has a
baseline and a fork process; each process calls the next service's router.

The client's `baggage` carries the key with properties (`K;ttl=60`, which OpenTelemetry-Python
re-injects as `K%3Bttl%3D60`), alone, and with whitespace (`laneway-key = K ;p=1`, re-injected as
`K+%3Bp%3D1`, and re-encoded again by OpenTelemetry-JS). Every keyed request must be served by the
fork at all three hops, by each response body and by each router's hop records (matched to the
request by its trace id, which the SDKs carry on); unkeyed requests only by baselines; a second
key forking only B takes A and C at their baselines and B at its fork.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from laneway.core.hops import Hop
from laneway.core.routes import ForkRoute, RouteTable, Upstream
from laneway.router import Router, RouterSettings
from tests.unit.test_baggage_sdks import _cache_dir, _install
from tests.upstreams import collect_hops

APPS = Path(__file__).parents[1] / "apps"
HOP_A = APPS / "otel" / "hop_a.py"
HOP_B = APPS / "otel" / "hop_b.js"
HOP_C = APPS / "chain.py"
SERVICES = ("a", "b", "c")
K = "abc123def456"  # forks A, B and C (sandbox sb-k)
K2 = "zzz999yyy888"  # forks only B (sandbox sb-k2)
HEALTH_TIMEOUT_S = 20.0
REQUESTS = 50  # per variant: 25 one after the other, 25 at once

KEYED_VARIANTS = {
    "properties": f"laneway-key={K};ttl=60, other=1",
    "alone": f"laneway-key={K}",
    "ows": f"laneway-key = {K} ;p=1",
}
UNKEYED_VARIANTS: dict[str, str | None] = {
    "no-baggage": None,
    "other-members": "other=1, team=pricing;p=1",
}


@pytest.fixture(scope="module")
def otel_js() -> Path:
    """node_modules with the pinned OpenTelemetry-JS packages (shared with test_baggage_sdks)."""
    target = _cache_dir()
    if not (target / "node_modules" / "@opentelemetry" / "core" / "package.json").exists():
        _install(target)  # skips the module when node, npm or the registry is missing
    return target / "node_modules"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class App:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""


@dataclass
class Chain:
    urls: dict[str, str]  # service -> its router
    routers: dict[str, Router]
    hops: list[Hop] = field(default_factory=list)
    apps: list[App] = field(default_factory=list)

    async def settled_hops(self, count: int) -> list[Hop]:
        for _ in range(250):
            for router in self.routers.values():
                router.recorder.flush()
            if len(self.hops) >= count:
                break
            await asyncio.sleep(0.02)
        return list(self.hops)


def _spawn(name: str, argv: list[str], env: dict[str, str], logs: Path) -> App:
    port = _free_port()
    log = logs / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env={**os.environ, **env, "PORT": str(port)},
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return App(name, proc, port, log)


async def _wait_healthy(apps: list[App]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + HEALTH_TIMEOUT_S
    async with httpx.AsyncClient(timeout=1.0) as client:
        for app in apps:
            while True:
                if app.proc.poll() is not None:
                    pytest.fail(f"{app.name} exited with {app.proc.returncode}:\n{app.tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"http://127.0.0.1:{app.port}/healthz")).status_code \
                            == 200:
                        break
                if loop.time() > deadline:
                    pytest.fail(f"{app.name} not healthy within {HEALTH_TIMEOUT_S}s:\n"
                                f"{app.tail()}")
                await asyncio.sleep(0.05)


def _stop(apps: list[App]) -> None:
    for app in apps:
        if app.proc.poll() is None:
            app.proc.terminate()
    for app in apps:
        try:
            app.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            app.proc.kill()
            app.proc.wait(timeout=5)


@pytest.fixture
def node() -> str:
    path = shutil.which("node")
    if path is None:
        pytest.skip("node is not on PATH: hop B (OpenTelemetry-JS) cannot run")
    return path


@pytest.fixture
async def chain(otel_js: Path, node: str, tmp_path: Path) -> AsyncIterator[Chain]:
    hops: list[Hop] = []
    routers = {s: Router(RouterSettings(), hop_sink=collect_hops(hops)) for s in SERVICES}
    apps: list[App] = []
    try:
        yield await _build(routers, hops, apps, otel_js, node, tmp_path)
    finally:
        _stop(apps)
        for router in routers.values():
            await router.close()


async def _build(routers: dict[str, Router], hops: list[Hop], apps: list[App], otel_js: Path,
                 node: str, logs: Path) -> Chain:
    ports = {s: await r.listen(s, 0) for s, r in routers.items()}
    urls = {s: f"http://127.0.0.1:{p}" for s, p in ports.items()}

    def spawn(service: str, version: str, argv: list[str], extra: dict[str, str]) -> App:
        app = _spawn(f"{service}-{version}", argv,
                     {"LANEWAY_SERVICE": service, "VERSION": version, **extra}, logs)
        apps.append(app)
        return app

    c = {v: spawn("c", v, [sys.executable, str(HOP_C)], {}) for v in ("baseline", "fork")}
    b = {v: spawn("b", v, [node, str(HOP_B)], {"NEXT_URL": urls["c"],
                                               "NODE_PATH": str(otel_js)})
         for v in ("baseline", "fork", "fork2")}
    a = {v: spawn("a", v, [sys.executable, str(HOP_A)], {"NEXT_URL": urls["b"]})
         for v in ("baseline", "fork")}
    await _wait_healthy(apps)

    def up(app: App) -> Upstream:
        return Upstream("127.0.0.1", app.port)

    def fork(service: str, sandbox: str, app: App) -> ForkRoute:
        return ForkRoute(service, sandbox, up(app), True, fork=f"{service}@{sandbox}#1")

    table = RouteTable(version=1, baseline={"a": up(a["baseline"]), "b": up(b["baseline"]),
                                            "c": up(c["baseline"])})
    table.forks["a"] = {K: fork("a", "sb-k", a["fork"])}
    table.forks["b"] = {K: fork("b", "sb-k", b["fork"]), K2: fork("b", "sb-k2", b["fork2"])}
    table.forks["c"] = {K: fork("c", "sb-k", c["fork"])}
    for router in routers.values():
        router.apply(table)
    return Chain(urls, routers, hops, apps)


def _versions(body: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    node: dict[str, Any] | None = body
    while node is not None:
        out.append((node["service"], node["version"]))
        node = node["next"]
    return out


async def _send(chain: Chain, baggage: str | None, count: int) -> dict[str, list[tuple[str, str]]]:
    """`count` requests to A's router (half in sequence, half at once): trace id -> versions."""
    results: dict[str, list[tuple[str, str]]] = {}

    async def one(client: httpx.AsyncClient) -> None:
        trace_id = secrets.token_hex(16)
        headers = {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"}
        if baggage is not None:
            headers["baggage"] = baggage
        resp = await client.get("/", headers=headers)
        assert resp.status_code == 200, (baggage, resp.status_code, resp.text,
                                         [a.tail() for a in chain.apps])
        results[trace_id] = _versions(resp.json())

    async with httpx.AsyncClient(base_url=chain.urls["a"], timeout=15) as client:
        for _ in range(count // 2):
            await one(client)
        await asyncio.gather(*(one(client) for _ in range(count - count // 2)))
    return results


def _by_trace(hops: list[Hop]) -> dict[str, list[Hop]]:
    grouped: dict[str, list[Hop]] = {}
    for hop in hops:
        grouped.setdefault(hop.trace_id, []).append(hop)
    return grouped


def _expect(chain_hops: list[Hop], key: str, destinations: dict[str, str]) -> None:
    seen = sorted((h.service, h.routing_key, h.destination, h.status, h.key_conflict)
                  for h in chain_hops)
    assert seen == [(s, key, destinations[s], 200, False) for s in SERVICES], seen


async def test_every_hop_follows_the_key_through_opentelemetry(chain: Chain) -> None:
    sent: dict[str, tuple[str, dict[str, list[tuple[str, str]]]]] = {}
    for name, baggage in KEYED_VARIANTS.items():
        sent[name] = (K, await _send(chain, baggage, REQUESTS))
    for name, unkeyed in UNKEYED_VARIANTS.items():
        sent[name] = ("", await _send(chain, unkeyed, REQUESTS))

    fork = [("a", "fork"), ("b", "fork"), ("c", "fork")]
    baseline = [("a", "baseline"), ("b", "baseline"), ("c", "baseline")]
    total = 0
    for name, (key, results) in sent.items():
        assert len(results) == REQUESTS
        for versions in results.values():
            assert versions == (fork if key else baseline), (name, versions)
        total += 3 * len(results)

    hops = _by_trace(await chain.settled_hops(total))
    assert sum(len(h) for h in hops.values()) == total
    for name, (key, results) in sent.items():
        where = "sb-k" if key else "baseline"
        for trace_id in results:
            assert trace_id in hops, (name, trace_id)
            _expect(hops[trace_id], key, dict.fromkeys(SERVICES, where))


async def test_a_key_forking_only_b_leaves_a_and_c_at_their_baselines(chain: Chain) -> None:
    results = await _send(chain, f"laneway-key={K2};ttl=60, other=1", REQUESTS)
    for versions in results.values():
        assert versions == [("a", "baseline"), ("b", "fork2"), ("c", "baseline")], versions
    hops = _by_trace(await chain.settled_hops(3 * REQUESTS))
    assert len(hops) == REQUESTS
    for trace_id in results:
        _expect(hops[trace_id], K2, {"a": "baseline", "b": "sb-k2", "c": "baseline"})

