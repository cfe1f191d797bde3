"""Ten sandboxes, each with a Postgres branch and a forked stream worker, under concurrent
writes and messages with mixed keys: every row and every message lands where its key says."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis

from laneway.plugins.postgres import with_database
from tests.e2e.conftest import Project, alive, free_ports

LEDGER = str(Path(__file__).parents[2] / "examples" / "ledger" / "ledger.py")
SANDBOXES = 10
PER_KEY = 12


@pytest.fixture
def ledger(tmp_path: Path, postgres_url: str, redis_url: str) -> Iterator[Project]:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for (name,) in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE "
                                    "'ledger%'").fetchall():
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        conn.execute("CREATE DATABASE ledger")
    base = with_database(postgres_url, "ledger")
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id serial PRIMARY KEY, item text, key text)")
        conn.execute("CREATE TABLE processed (msg_id text, item text, key text)")
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    client.close()
    api_port, worker_port = free_ports(2)
    project = Project(tmp_path, {"api": api_port, "worker": worker_port})
    project.write("laneway.yaml", f"""
name: ledger
services:
  api:
    run: [{sys.executable}, {LEDGER}, api]
    port: {api_port}
    health: /healthz
    env: {{DATABASE_URL: "{base}", REDIS_URL: "{redis_url}"}}
  worker:
    run: [{sys.executable}, {LEDGER}, worker]
    port: {worker_port}
    health: /healthz
    env: {{DATABASE_URL: "{base}", REDIS_URL: "{redis_url}"}}
""")
    project.base_url = base  # type: ignore[attr-defined]
    with project.running():
        yield project


def items(url: str, table: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return sorted(r[0] for r in conn.execute(f"SELECT item FROM {table}").fetchall())


async def test_ten_sandboxes_with_branches_and_forked_consumers(ledger: Project) -> None:
    base: str = ledger.base_url  # type: ignore[attr-defined]

    def apply(i: int) -> dict[str, Any]:
        ledger.write(f"sb{i}.yaml", f"""
name: sb{i}
resources:
  - name: db
    plugin: postgres
    params: {{url: "{base}"}}
forks:
  - service: api
    env: {{DATABASE_URL: "${{resources.db.url}}"}}
  - service: worker
    env: {{DATABASE_URL: "${{resources.db.url}}"}}
""")
        view: dict[str, Any] = ledger.json("sandbox", "apply", "-f", f"sb{i}.yaml", "--wait")
        assert view["status"]["ready"], view["status"]
        return view

    with ThreadPoolExecutor(max_workers=5) as pool:
        views = list(pool.map(apply, range(SANDBOXES)))
    keys: dict[str | None, str] = {None: "base"}
    branches: dict[str, str] = {"base": base}
    for view in views:
        keys[view["routingKey"]] = view["name"]
        (db,) = view["status"]["resources"]
        assert db["phase"] == "ready"
        branches[view["name"]] = db["outputs"]["url"]

    plan = [(key, f"{name}-{n}") for key, name in keys.items() for n in range(PER_KEY)]
    plan.sort(key=lambda p: (p[1].split("-")[-1], p[1]))  # interleave keys
    # Each order opens its own Postgres connection, and the one server (max_connections 100)
    # also serves eleven workers and this test: 32 orders in flight keep every key concurrent
    # without asking Postgres for more clients than it has (httpx's default allows 100).
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(base_url=ledger.url("api"), timeout=30,
                                 limits=limits) as client:
        async def post(key: str | None, item: str) -> None:
            headers = {"baggage": f"laneway-key={key}"} if key else {}
            resp = await client.post("/orders", params={"item": item}, headers=headers)
            assert resp.status_code == 201, resp.text

        await asyncio.gather(*(post(k, i) for k, i in plan))

    expected = {name: sorted(f"{name}-{n}" for n in range(PER_KEY)) for name in keys.values()}
    deadline = time.monotonic() + 60
    while any(len(items(branches[name], "processed")) < PER_KEY for name in expected):
        assert time.monotonic() < deadline, {n: len(items(branches[n], "processed"))
                                             for n in expected}
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)  # anything processed twice would show up now
    for name, wanted in expected.items():
        assert items(branches[name], "orders") == wanted, name  # writes only in its branch
        assert items(branches[name], "processed") == wanted, name  # each message once, here

    # Deleting a sandbox stops its consumer and drops its database.
    gone = views[0]
    worker_pid = next(f["pid"] for f in gone["status"]["forks"] if f["service"] == "worker")
    ledger.run("sandbox", "delete", gone["name"])
    deadline = time.monotonic() + 20
    database = gone["status"]["resources"][0]["outputs"]["database"]
    while True:
        with psycopg.connect(base) as conn:
            present = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                   (database,)).fetchone()
        if present is None and not alive(worker_pid):
            break
        assert time.monotonic() < deadline, "the branch or the worker outlived the sandbox"
        await asyncio.sleep(0.1)


def test_bad_resources_are_clear_and_leave_nothing(ledger: Project, postgres_url: str) -> None:
    ledger.write("bad.yaml", "name: bad\nresources:\n  - {name: db, plugin: oracle}\n"
                 "forks: [{service: api}]\n")
    result = ledger.run("sandbox", "apply", "-f", "bad.yaml", check=False)
    assert result.returncode == 1
    assert "resources[0].plugin: unknown plugin 'oracle'; built in: exec, postgres, redis, " \
           "sqlite" in result.stderr
    ledger.write("bad.yaml", "name: bad\nresources:\n  - {name: db, plugin: postgres}\n"
                 "forks: [{service: api}]\n")
    result = ledger.run("sandbox", "apply", "-f", "bad.yaml", check=False)
    assert "resources[0].params.url: Field required" in result.stderr
    ledger.write("bad.yaml", "name: bad\nforks:\n  - service: api\n"
                 "    env: {DATABASE_URL: '${resources.db.url}'}\n")
    result = ledger.run("sandbox", "apply", "-f", "bad.yaml", check=False)
    assert "names a resource this sandbox does not declare" in result.stderr
    assert ledger.json("sandbox", "list") == []

    unreachable = with_database(postgres_url, "no_such_db")
    ledger.write("bad.yaml", f"""
name: bad
resources:
  - {{name: db, plugin: postgres, params: {{url: "{unreachable}"}}}}
forks:
  - service: api
    env: {{DATABASE_URL: "${{resources.db.url}}"}}
""")
    result = ledger.run("sandbox", "apply", "-f", "bad.yaml", "--wait", check=False)
    assert result.returncode == 1
    assert "resource db (postgres) failed: postgres: cannot connect" in result.stderr
    assert 'database "no_such_db" does not exist' in result.stderr
    view = ledger.json("sandbox", "get", "bad")
    assert [f["pid"] for f in view["status"]["forks"]] == [None]  # no fork was started
    with psycopg.connect(postgres_url) as conn:
        names = [r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()]
    assert not any("__lw_" in n for n in names)
    ledger.run("sandbox", "delete", "bad")
    assert ledger.json("status")["services"][0]["phase"] == "ready"  # nothing else disturbed
