"""Resource plugins against real PostgreSQL and Redis servers: branches hold their own data,
the baseline is never written, failures leave nothing behind."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from laneway.core.resources import PluginError, ResourceContext
from laneway.plugins.exec import ExecPlugin
from laneway.plugins.postgres import PostgresPlugin, branch_name, with_database
from laneway.plugins.redis import RedisPlugin
from laneway.plugins.sqlite import SqlitePlugin


def ctx(tmp_path: Path, sandbox: str = "sb-a", resource: str = "db") -> ResourceContext:
    return ResourceContext(sandbox, resource, "key000000001", tmp_path / sandbox)


@pytest.fixture
def baseline_db(postgres_url: str) -> str:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS shop WITH (FORCE)")
        conn.execute("CREATE DATABASE shop")
    url = with_database(postgres_url, "shop")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders (id serial PRIMARY KEY, item text NOT NULL)")
        conn.execute("INSERT INTO orders (item) VALUES ('book'), ('lamp')")
    return url


def rows(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute("SELECT item FROM orders ORDER BY id").fetchall()]


def databases(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}


async def test_postgres_branch_while_the_baseline_holds_connections(
    baseline_db: str, tmp_path: Path
) -> None:
    plugin = PostgresPlugin()
    params = plugin.params_model.model_validate({"url": baseline_db})
    holder = await psycopg.AsyncConnection.connect(baseline_db, autocommit=True)
    stop = asyncio.Event()

    async def keep_writing() -> int:  # the baseline keeps working during the branch
        count = 0
        while not stop.is_set():
            await holder.execute("INSERT INTO orders (item) VALUES ('mug')")
            count += 1
            await asyncio.sleep(0.005)
        return count

    writer = asyncio.ensure_future(keep_writing())
    try:
        outputs, state = await plugin.create(ctx(tmp_path), params)
    finally:
        stop.set()
        written = await writer
        await holder.close()
    assert state["database"] == branch_name("shop", "sb-a", "db")
    assert written > 0
    branch = outputs["url"]
    assert rows(branch)[:2] == ["book", "lamp"]
    with psycopg.connect(branch, autocommit=True) as conn:
        conn.execute("INSERT INTO orders (item) VALUES ('sandbox-only')")
    assert "sandbox-only" in rows(branch)
    assert "sandbox-only" not in rows(baseline_db)
    await plugin.delete(ctx(tmp_path), params, state)
    assert state["database"] not in databases(baseline_db)
    assert rows(baseline_db)[:2] == ["book", "lamp"]


async def test_postgres_schema_only_and_bad_input(baseline_db: str, tmp_path: Path) -> None:
    plugin = PostgresPlugin()
    params = plugin.params_model.model_validate({"url": baseline_db, "copy": "schema"})
    outputs, state = await plugin.create(ctx(tmp_path, resource="schema"), params)
    assert rows(outputs["url"]) == []
    await plugin.delete(ctx(tmp_path, resource="schema"), params, state)

    missing = plugin.params_model.model_validate({"url": with_database(baseline_db, "nope")})
    with pytest.raises(PluginError, match=r'cannot connect to .*database "nope" does not exist'):
        await plugin.create(ctx(tmp_path, resource="bad"), missing)
    assert not any("__lw_" in name for name in databases(baseline_db))
    # Deleting never touches a database that is not a branch of ours.
    await plugin.delete(ctx(tmp_path), params, {"database": "shop"})
    assert "shop" in databases(baseline_db)


async def test_redis_prefix_and_db_modes(redis_url: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_url)
    client.set("baseline:key", "1")
    plugin = RedisPlugin()
    prefix_params = plugin.params_model.model_validate({"url": redis_url})
    outputs, state = await plugin.create(ctx(tmp_path), prefix_params)
    assert outputs["prefix"] == "lw:sb-a:db:"
    client.set(outputs["prefix"] + "cart", "x")
    await plugin.delete(ctx(tmp_path), prefix_params, state)
    assert client.get(outputs["prefix"] + "cart") is None
    assert client.get("baseline:key") == b"1"

    db_params = plugin.params_model.model_validate({"url": redis_url, "mode": "db"})
    first, first_state = await plugin.create(ctx(tmp_path, "sb-a"), db_params)
    second, second_state = await plugin.create(ctx(tmp_path, "sb-b"), db_params)
    assert first["url"] != second["url"]
    redis.Redis.from_url(first["url"]).set("cart", "a")
    await plugin.delete(ctx(tmp_path, "sb-a"), db_params, first_state)
    assert redis.Redis.from_url(first["url"]).dbsize() == 0
    await plugin.delete(ctx(tmp_path, "sb-b"), db_params, second_state)
    assert client.get("baseline:key") == b"1"
    client.close()

    with pytest.raises(PluginError, match="redis: cannot reach"):
        await plugin.create(ctx(tmp_path), plugin.params_model.model_validate(
            {"url": f"unix://{tmp_path}/nothing.sock"}))


async def test_redis_delete_removes_the_forks_consumer_groups(redis_url: str,
                                                              tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_url)
    orders, audit = f"orders-{tmp_path.name}", f"audit-{tmp_path.name}"  # the server is shared
    client.xadd(orders, {"item": "book"})
    client.xadd(audit, {"what": "x"})
    for stream, group in ((orders, "workers"), (orders, "workers@key000000001"),
                          (audit, "auditors@key000000001"),
                          (orders, "workers@key000000002")):
        client.xgroup_create(stream, group, id="0")
    client.set(f"not-a-stream-{tmp_path.name}", "1")
    plugin = RedisPlugin()
    params = plugin.params_model.model_validate({"url": redis_url})
    _, state = await plugin.create(ctx(tmp_path), params)  # routing key key000000001
    await plugin.delete(ctx(tmp_path), params, state)
    left = {(s, g["name"].decode()) for s in (orders, audit) for g in client.xinfo_groups(s)}
    assert left == {(orders, "workers"), (orders, "workers@key000000002")}
    assert client.xlen(orders) == 1  # the streams themselves are the baseline's
    client.close()


async def test_sqlite_copy(tmp_path: Path) -> None:
    source = tmp_path / "base.db"
    with contextlib.closing(sqlite3.connect(source)) as db:
        db.execute("CREATE TABLE t (v TEXT)")
        db.execute("INSERT INTO t VALUES ('base')")
        db.commit()
    plugin = SqlitePlugin()
    params = plugin.params_model.model_validate({"path": str(source)})
    outputs, state = await plugin.create(ctx(tmp_path), params)
    with contextlib.closing(sqlite3.connect(outputs["path"])) as db:
        db.execute("INSERT INTO t VALUES ('sandbox')")
        db.commit()
    with contextlib.closing(sqlite3.connect(source)) as db:
        assert db.execute("SELECT v FROM t").fetchall() == [("base",)]
    await plugin.delete(ctx(tmp_path), params, state)
    assert not Path(outputs["path"]).exists()
    with pytest.raises(PluginError, match="does not exist"):
        await plugin.create(ctx(tmp_path), plugin.params_model.model_validate(
            {"path": str(tmp_path / "missing.db")}))


async def test_exec_outputs_and_failures(tmp_path: Path) -> None:
    marker = tmp_path / "made"
    plugin = ExecPlugin()
    params: Any = plugin.params_model.model_validate({
        "create": f"touch {marker} && echo making >&2 && "
                  "echo '{\"token\": \"'$LANEWAY_SANDBOX'-t\"}'",
        "delete": f"test \"$LANEWAY_OUTPUT_TOKEN\" = sb-a-t && rm {marker}",
    })
    outputs, state = await plugin.create(ctx(tmp_path), params)
    assert outputs == {"token": "sb-a-t"}
    assert marker.exists()
    await plugin.delete(ctx(tmp_path), params, state)
    assert not marker.exists()
    failing = plugin.params_model.model_validate({
        "create": [sys.executable, "-c", "import sys; sys.exit('quota exceeded')"],
        "delete": "true"})
    with pytest.raises(PluginError, match="exited with code 1: quota exceeded"):
        await plugin.create(ctx(tmp_path), failing)
    no_json = plugin.params_model.model_validate({"create": "echo hello", "delete": "true"})
    with pytest.raises(PluginError, match="must print a JSON object"):
        await plugin.create(ctx(tmp_path), no_json)
