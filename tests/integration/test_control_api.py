"""The control plane's API on a real socket, over the in-memory runtime (our own interface)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from laneway.control.api import create_app
from laneway.control.plane import ControlPlane
from laneway.control.reconciler import Reconciler
from laneway.control.store import MemoryStore, Record, SqliteStore
from laneway.core.feed import RoutesBroadcaster
from laneway.core.hoplog import HopLog
from laneway.core.hops import Hop
from laneway.core.spec import parse_project
from laneway.runtime.memory import MemoryRuntime

PROJECT = parse_project({"name": "shop", "services": {
    "currency": {"run": "c", "port": 19404},
    "pricing": {"run": "p", "port": 19403, "depends_on": ["currency"]},
    "web": {"run": "w", "port": 19401},
}})
TOKEN = "test-token"


class Env:
    def __init__(self, client: httpx.AsyncClient, control: ControlPlane,
                 runtime: MemoryRuntime) -> None:
        self.client = client
        self.control = control
        self.runtime = runtime


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    runtime = MemoryRuntime()
    control = ControlPlane(PROJECT, MemoryStore(), runtime, RoutesBroadcaster(), HopLog(1000))
    reconciler = Reconciler(control)
    reconciler.start()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = _Server(uvicorn.Config(create_app(control, TOKEN), log_level="warning",
                                    lifespan="off"))
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    async with httpx.AsyncClient(base_url=url,
                                 headers={"authorization": f"Bearer {TOKEN}"}) as client:
        yield Env(client, control, runtime)
    server.should_exit = True
    await task
    await reconciler.close()


async def test_token_is_required(env: Env) -> None:
    async with httpx.AsyncClient(base_url=str(env.client.base_url)) as anonymous:
        resp = await anonymous.get("/v1/sandboxes")
        assert resp.status_code == 401
        assert "token" in resp.json()["message"]
        assert (await anonymous.get("/openapi.json")).status_code == 200


async def test_openapi_documents_the_specs(env: Env) -> None:
    doc = (await env.client.get("/openapi.json")).json()
    assert "/v1/sandboxes/{name}" in doc["paths"]
    assert "forks" in doc["components"]["schemas"]["SandboxSpec"]["properties"]


async def test_apply_is_idempotent_and_keeps_the_key(env: Env) -> None:
    spec = {"name": "sb-a", "labels": {"team": "x"}, "forks": [{"service": "pricing"}]}
    first = await env.client.put("/v1/sandboxes/sb-a", json=spec, params={"wait": 5})
    assert first.status_code == 201
    body = first.json()
    assert body["status"]["ready"] is True
    assert len(body["routingKey"]) == 12
    again = await env.client.put("/v1/sandboxes/sb-a", json=spec)
    assert again.status_code == 200
    assert again.json()["routingKey"] == body["routingKey"]
    assert again.json()["generation"] == 1
    changed = await env.client.put("/v1/sandboxes/sb-a", json={
        **spec, "forks": [{"service": "pricing", "env": {"V": "2"}}]})
    assert changed.json()["routingKey"] == body["routingKey"]
    assert changed.json()["generation"] == 2
    listed = (await env.client.get("/v1/sandboxes")).json()
    assert [s["name"] for s in listed] == ["sb-a"]


async def test_invalid_specs_are_422_with_field_paths(env: Env) -> None:
    resp = await env.client.put("/v1/sandboxes/sb-a", json={
        "forks": [{"service": "ghost"}, {"service": "pricing"}, {"service": "pricing"}]})
    assert resp.status_code == 422
    body = resp.json()
    assert body["code"] == "invalid"
    assert body["field"] == "forks[2].service"
    resp = await env.client.put("/v1/sandboxes/sb-a", json={"forks": [{"service": "ghost"}]})
    assert resp.json()["field"] == "forks[0].service"
    assert "unknown service 'ghost'" in resp.json()["message"]
    resp = await env.client.put("/v1/sandboxes/sb-a", json={"name": "other"})
    assert resp.status_code == 422
    resp = await env.client.put("/v1/sandboxes/sb-a", content=b"{not json")
    assert resp.status_code == 422
    assert (await env.client.get("/v1/sandboxes")).json() == []  # nothing half-applied


async def test_unknown_names_are_404(env: Env) -> None:
    for path in ("/v1/sandboxes/nope", "/v1/routegroups/nope", "/v1/sandboxes/nope/logs"):
        resp = await env.client.get(path)
        assert resp.status_code == 404, path
        assert "nope" in resp.json()["message"]
    assert (await env.client.delete("/v1/sandboxes/nope")).status_code == 404


async def test_delete_stops_forks_and_removes_routes(env: Env) -> None:
    await env.client.put("/v1/sandboxes/sb-a", json={"forks": [{"service": "web"}]},
                         params={"wait": 5})
    key = (await env.client.get("/v1/sandboxes/sb-a")).json()["routingKey"]
    assert key in env.control.feed.snapshot().forks["web"]
    await env.client.delete("/v1/sandboxes/sb-a")
    deadline = time.monotonic() + 5
    while not any(u.startswith("web@sb-a") for u in env.runtime.stopped):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert key not in env.control.feed.snapshot().forks["web"]
    assert [e["action"] for e in (await env.client.get("/v1/audit")).json()] == \
        ["create", "delete"]


async def test_ttl_expiry_deletes_the_sandbox(env: Env) -> None:
    await env.client.put("/v1/sandboxes/short", json={"ttl": 1, "forks": [
        {"service": "web"}]})
    deadline = time.monotonic() + 5
    while (await env.client.get("/v1/sandboxes/short")).status_code != 404:
        assert time.monotonic() < deadline, "the sandbox did not expire"
        await asyncio.sleep(0.1)
    assert env.control.store.audit_log(10)[-1].action == "expire"


async def test_route_group_spans_sandboxes_and_reports_conflicts(env: Env) -> None:
    for name, service, feature in (("a", "pricing", "f1"), ("b", "web", "f1"),
                                   ("c", "web", "f1")):
        await env.client.put(f"/v1/sandboxes/{name}", json={
            "labels": {"feature": feature}, "forks": [{"service": service}]})
    resp = await env.client.put("/v1/routegroups/g", json={"match": {"labels": {
        "feature": "f*"}}})
    assert resp.status_code == 201
    group = resp.json()
    assert group["status"]["conflicts"] == [{"service": "web", "sandboxes": ["b", "c"]}]
    await env.client.delete("/v1/sandboxes/c")
    group = (await env.client.get("/v1/routegroups/g")).json()
    assert group["status"]["conflicts"] == []
    assert group["status"]["sandboxes"] == ["a", "b"]
    table = env.control.feed.snapshot()
    assert table.forks["web"][group["routingKey"]].sandbox == "b"
    assert table.forks["pricing"][group["routingKey"]].sandbox == "a"


async def test_routes_feed_serves_snapshot_then_changes(env: Env) -> None:
    first = (await env.client.get("/v1/routes")).json()
    assert "snapshot" in first
    version = first["version"]
    waiting = asyncio.ensure_future(env.client.get("/v1/routes", params={
        "since": version, "wait": 5}))
    await env.client.put("/v1/sandboxes/sb-a", json={"forks": [{"service": "web"}]})
    changes = (await waiting).json()
    assert changes["version"] > version
    assert any(u["service"] == "web" for c in changes["changes"] for u in c["upserts"])


async def test_hops_by_sandbox_and_trace(env: Env) -> None:
    await env.client.put("/v1/sandboxes/sb-a", json={"forks": [{"service": "web"}]})
    key = (await env.client.get("/v1/sandboxes/sb-a")).json()["routingKey"]
    now = time.time()
    env.control.hops.add([
        Hop(now, "t1", "", "web", key, "sb-a", "web@sb-a#1", 200, 1.0, "GET", "/"),
        Hop(now + 0.001, "t1", "", "currency", key, "baseline", "", 200, 1.0, "GET", "/c"),
        Hop(now + 0.002, "t2", "", "web", "", "baseline", "", 200, 1.0, "GET", "/"),
    ])
    mine = (await env.client.get("/v1/hops", params={"sandbox": "sb-a"})).json()
    assert [h["service"] for h in mine] == ["web", "currency"]
    trace = (await env.client.get("/v1/hops", params={"trace": "t2"})).json()
    assert [h["destination"] for h in trace] == ["baseline"]
    # Tables show 12 characters of a trace id: a unique start of one is enough.
    whole = ["4bf92f3577b34da6a3ce929d0e0e4736", "4bf92f35aaaaaaaaaaaaaaaaaaaaaaaa"]
    env.control.hops.add([Hop(now + 0.003, t, "", "web", "", "baseline", "", 200, 1.0, "GET",
                              f"/{i}") for i, t in enumerate(whole)])
    by_start = (await env.client.get("/v1/hops", params={"trace": "4bf92f3577b3"})).json()
    assert [h["trace_id"] for h in by_start] == [whole[0]]
    ambiguous = await env.client.get("/v1/hops", params={"trace": "4BF92F35"})
    assert ambiguous.status_code == 422
    assert "is the start of 2 traces" in ambiguous.json()["message"]
    assert (await env.client.get("/v1/hops", params={"trace": "ffff"})).json() == []


def test_sqlite_store_round_trip(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    store.put(Record("sandbox", "a", {"name": "a"}, "key000000001", 1.0, 2.0, 1, None))
    store.close()
    reopened = SqliteStore(tmp_path / "state.db")
    record = reopened.get("sandbox", "a")
    assert record is not None
    assert record.routing_key == "key000000001"
    assert reopened.key_in_use("key000000001")
    assert reopened.delete("sandbox", "a")
    assert reopened.records("sandbox") == []
    reopened.close()


async def test_apply_says_what_changed_and_guards_against_lost_updates(env: Env) -> None:
    spec = {"forks": [{"service": "web", "env": {"A": "1"}}]}
    first = (await env.client.put("/v1/sandboxes/sb", json=spec)).json()
    assert (first["change"], first["generation"]) == ("created", 1)
    same = (await env.client.put("/v1/sandboxes/sb", json=spec)).json()
    assert (same["change"], same["generation"]) == ("unchanged", 1)
    assert "specDiff" not in same
    changed = {"forks": [{"service": "web", "env": {"A": "2"}}], "labels": {"t": "x"}}
    updated = (await env.client.put("/v1/sandboxes/sb", json=changed)).json()
    assert (updated["change"], updated["generation"]) == ("updated", 2)
    assert "-    A: '1'" in updated["specDiff"]
    assert "+    A: '2'" in updated["specDiff"]
    assert any(line.startswith("+labels:") for line in updated["specDiff"])
    # Guards: nothing changes when they refuse.
    refused = await env.client.put("/v1/sandboxes/sb", json=spec,
                                   params={"createOnly": "true"})
    assert refused.status_code == 409
    assert "exists already (generation 2)" in refused.json()["message"]
    stale = await env.client.put("/v1/sandboxes/sb", json=spec, params={"ifGeneration": 1})
    assert stale.status_code == 409
    assert "is at generation 2, not 1" in stale.json()["message"]
    assert (await env.client.get("/v1/sandboxes/sb")).json()["forks"][0]["env"] == {"A": "2"}
    fresh = await env.client.put("/v1/sandboxes/sb", json=spec, params={"ifGeneration": 2})
    assert fresh.json()["generation"] == 3
    new = await env.client.put("/v1/sandboxes/other", json=spec, params={"ifGeneration": 0})
    assert new.json()["change"] == "created"
    dry = await env.client.put("/v1/sandboxes/third", json={"forks": [{"service": "nope"}]},
                               params={"dryRun": "true"})
    assert dry.status_code == 422
    assert (await env.client.get("/v1/sandboxes/third")).status_code == 404
