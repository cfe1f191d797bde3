"""`/v1/experiments` on the real API over a socket: the reports experiments' clients keep there
(POST, PUT while running, final), their Markdown, the list without per-slice figures, a stale
report read as `interrupted`, bad reports refused with the field, and SQLite keeping them."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from laneway.control.store import SqliteStore
from tests.integration.test_control_api import Env, env  # noqa: F401  (the fixture)


def report(**extra: Any) -> dict[str, Any]:
    return {"name": "approaches", "status": "running", "verdict": "running",
            "rows": [{"target": "baseline", "kind": "baseline"},
                     {"target": "a", "kind": "sandbox"}],
            "load": {"request": "GET http://127.0.0.1:1/", "rate": 10.0, "duration_s": 2.0,
                     "slice_s": 1.0, "rounds": 2, "budget": {"quantile": "p95"},
                     "slices": [{"round": 0, "lane": "a", "requests": 10, "errors": 0,
                                 "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0}]},
            **extra}


async def test_a_report_is_kept_updated_and_then_final(env: Env) -> None:  # noqa: F811
    created = await env.client.post("/v1/experiments", json=report())
    assert created.status_code == 201
    first = created.json()
    assert first["id"].startswith("x")
    assert first["started_at"] <= time.time()
    done = report(status="finished", verdict="passed", progress="done")
    done["rows"][1].update(verdict="passed", sentence="a passed every check")
    updated = await env.client.put(f"/v1/experiments/{first['id']}", json=done)
    assert updated.status_code == 200
    assert updated.json()["started_at"] == first["started_at"]
    again = await env.client.put(f"/v1/experiments/{first['id']}", json=done)
    assert again.status_code == 422
    assert "final" in again.json()["message"]
    got = (await env.client.get(f"/v1/experiments/{first['id']}")).json()
    assert got["verdict"] == "passed"
    assert got["load"]["slices"]  # kept with its per-slice figures
    markdown = await env.client.get(f"/v1/experiments/{first['id']}", params={"format": "md"})
    assert "| `a` |" in markdown.text
    assert "a passed every check" in markdown.text
    listed = (await env.client.get("/v1/experiments")).json()
    assert [x["id"] for x in listed] == [first["id"]]
    assert "slices" not in listed[0]["load"]
    assert (await env.client.get("/v1/experiments/xnope")).status_code == 404


async def test_a_report_left_running_reads_interrupted(env: Env) -> None:  # noqa: F811
    first = (await env.client.post("/v1/experiments", json=report())).json()
    stored = env.control.store.get_experiment(first["id"])
    assert stored is not None
    env.control.store.put_experiment({**stored, "updated_at": time.time() - 61})
    got = (await env.client.get(f"/v1/experiments/{first['id']}")).json()
    assert (got["status"], got["verdict"]) == ("interrupted", "interrupted")


async def test_a_bad_report_is_refused_with_the_field(env: Env) -> None:  # noqa: F811
    bad = await env.client.post("/v1/experiments", json=report(verdict="great"))
    assert bad.status_code == 422
    assert bad.json()["field"] == "verdict"
    missing = await env.client.post("/v1/experiments", json={"status": "running"})
    assert missing.status_code == 422
    assert (await env.client.post("/v1/experiments", content=b"[1]")).status_code == 422


def test_sqlite_keeps_experiments_newest_first(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    store.put_experiment({"id": "x1", "name": "one", "started_at": 1.0, "rows": []})
    store.put_experiment({"id": "x2", "name": "two", "started_at": 2.0, "rows": []})
    store.put_experiment({"id": "x1", "name": "one", "started_at": 1.0, "rows": [{"a": 1}]})
    store.close()
    reopened = SqliteStore(tmp_path / "state.db")
    assert [x["id"] for x in reopened.experiments(10)] == ["x2", "x1"]
    assert reopened.get_experiment("x1") == {"id": "x1", "name": "one", "started_at": 1.0,
                                             "rows": [{"a": 1}]}
    assert reopened.get_experiment("x3") is None
    reopened.close()
