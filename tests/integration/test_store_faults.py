"""Store faults on real SQLite files: a corrupt `state.db` is one clear error at open (in the store
and from the daemon process) and is never touched; a full or read-only store makes the API answer
JSON 503 and leaves it holding exactly what it held; records keep their incarnation `uid`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from laneway.control.api import create_app
from laneway.control.errors import StoreUnavailable
from laneway.control.plane import ControlPlane
from laneway.control.reconciler import Reconciler
from laneway.control.store import (
    AuditEntry,
    MemoryStore,
    Record,
    SqliteStore,
    Store,
    StoreCorrupt,
)
from laneway.core.feed import RoutesBroadcaster
from laneway.core.hoplog import HopLog
from laneway.core.processes import find_marked
from laneway.core.spec import parse_project
from laneway.runtime.memory import MemoryRuntime

PROJECT = parse_project({"name": "shop", "services": {
    "pricing": {"run": "p", "port": 19403},
    "web": {"run": "w", "port": 19401},
}})
TOKEN = "test-token"
BIG = "v" * 300_000  # a value that needs many new pages of the database


def _record(name: str, key: str, **spec: object) -> Record:
    return Record("sandbox", name, {"name": name, **spec}, key, 1.0, 1.0)


def _filled_store(path: Path) -> None:
    """A valid store of several dozen pages, closed (its write-ahead log folded in)."""
    store = SqliteStore(path)
    for i in range(40):
        store.put_with_audit(_record(f"sb-{i}", f"key{i:09d}", env={"V": "x" * 2000}),
                             AuditEntry(1.0, "me", "create", "sandbox", f"sb-{i}"))
    store.close()
    assert not Path(f"{path}-wal").exists()


def _random_bytes(path: Path) -> None:
    path.write_bytes(os.urandom(64 * 1024))


def _damaged_page(path: Path) -> None:
    _filled_store(path)
    data = bytearray(path.read_bytes())
    page = 4096
    middle = (len(data) // page // 2) * page
    data[middle:middle + page] = b"\xa5" * page  # not a b-tree page, nor a valid overflow link
    path.write_bytes(bytes(data))


def _truncated(path: Path) -> None:
    _filled_store(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


@pytest.mark.parametrize("damage", [_random_bytes, _damaged_page, _truncated],
                         ids=["random-bytes", "damaged-page", "truncated"])
def test_a_corrupt_store_is_one_clear_error_and_is_left_alone(tmp_path: Path, damage) -> None:
    path = tmp_path / "state.db"
    damage(path)
    before = path.read_bytes()
    with pytest.raises(StoreCorrupt) as caught:
        SqliteStore(path)
    message = str(caught.value)
    print(message)
    assert str(path) in message
    assert caught.value.reason in message
    assert caught.value.reason in ("file is not a database", "database disk image is malformed")
    assert "laneway up" in message
    assert "laneway deletes nothing itself" in message
    assert path.read_bytes() == before, "the store was written to"
    command = message.split("e.g. `", 1)[1].split("`", 1)[0]
    assert command == f"mv {path} {path}.corrupt"
    subprocess.run(["/bin/sh", "-c", command], check=True)
    assert Path(f"{path}.corrupt").read_bytes() == before
    fresh = SqliteStore(path)
    assert fresh.records("sandbox") == []
    fresh.close()


def test_the_advice_for_a_crashed_daemons_corrupt_store_works(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    # A daemon killed mid-flight leaves its write-ahead log beside the file.
    _filled_store(path)
    subprocess.run([sys.executable, "-c", (
        "import os, sys; from pathlib import Path; from laneway.control.store import Record, "
        "SqliteStore; s = SqliteStore(Path(sys.argv[1])); "
        "s.put(Record('sandbox', 'sb-a', {}, 'keycrashed01', 1.0, 1.0)); os._exit(0)"),
        str(path)], check=True, timeout=30)
    assert Path(f"{path}-wal").stat().st_size > 0
    path.write_bytes(os.urandom(path.stat().st_size))
    with pytest.raises(StoreCorrupt) as caught:
        SqliteStore(path)
    message = str(caught.value)
    command = message.split("e.g. `", 1)[1].split("`", 1)[0]
    assert command == (f"mv {path} {path}.corrupt && mv {path}-wal {path}-wal.corrupt && "
                       f"mv {path}-shm {path}-shm.corrupt")
    subprocess.run(["/bin/sh", "-c", command], check=True)
    fresh = SqliteStore(path)
    assert fresh.records("sandbox") == []  # the old log was not replayed into the new store
    fresh.close()
    assert Path(f"{path}.corrupt").exists()


def test_the_daemon_says_the_store_is_corrupt_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    (tmp_path / "laneway.yaml").write_text(
        f"name: shop\nservices:\n  web:\n    run: python -m http.server $PORT\n"
        f"    port: {port}\n")
    state = tmp_path / ".laneway"
    state.mkdir()
    (state / "state.db").write_bytes(os.urandom(32 * 1024))
    before = (state / "state.db").read_bytes()
    done = subprocess.run([sys.executable, "-m", "laneway.daemon", "-f", "laneway.yaml"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False)
    print(done.stderr)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr + done.stdout
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1
    assert errors[0].startswith(f"Error: the store {state / 'state.db'} is corrupt: file is "
                                "not a database. Move it aside")
    assert (state / "state.db").read_bytes() == before
    assert find_marked(state) == [], "the daemon left processes behind"


def test_an_old_store_gets_a_uid_for_every_record(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with contextlib.closing(sqlite3.connect(path)) as old, old:
        old.execute("CREATE TABLE records (kind TEXT NOT NULL, name TEXT NOT NULL, spec TEXT "
                    "NOT NULL, routing_key TEXT NOT NULL UNIQUE, created_at REAL NOT NULL, "
                    "updated_at REAL NOT NULL, generation INTEGER NOT NULL, expires_at REAL, "
                    "PRIMARY KEY (kind, name))")
        old.executemany("INSERT INTO records VALUES (?, ?, '{}', ?, 1, 2, 3, NULL)",
                        [("sandbox", "a", "key000000001"), ("routegroup", "g", "key000000002")])
    store = SqliteStore(path)
    uids = {r.name: r.uid for kind in ("sandbox", "routegroup") for r in store.records(kind)}
    store.close()
    assert set(uids) == {"a", "g"}
    assert all(len(u) == 12 and int(u, 16) >= 0 for u in uids.values())
    assert uids["a"] != uids["g"]
    reopened = SqliteStore(path)
    record = reopened.get("sandbox", "a")
    reopened.close()
    assert record is not None
    assert (record.uid, record.generation, record.routing_key) == (uids["a"], 3, "key000000001")


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_record_keeps_its_uid_through_updates_and_a_new_one_is_new(tmp_path: Path,
                                                                     kind: str) -> None:
    store: Store = MemoryStore() if kind == "memory" else SqliteStore(tmp_path / "state.db")
    first = _record("sb-a", "key000000001")
    assert first.uid != _record("sb-a", "key000000001").uid
    store.put(first)
    stored = store.get("sandbox", "sb-a")
    assert stored is not None
    assert stored.uid == first.uid
    store.put(Record("sandbox", "sb-a", {"name": "sb-a", "env": {"V": "2"}}, "key000000001",
                     1.0, 2.0, 2, None, first.uid))
    updated = store.get("sandbox", "sb-a")
    assert updated is not None
    assert (updated.uid, updated.generation) == (first.uid, 2)
    assert store.delete("sandbox", "sb-a")
    again = _record("sb-a", "key000000001")
    store.put(again)
    recreated = store.get("sandbox", "sb-a")
    assert recreated is not None
    assert recreated.uid == again.uid != first.uid
    store.close()


def _fill_up(store: SqliteStore) -> None:
    """A real SQLITE_FULL: the store's own connection may not grow the file by one page."""
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")


def test_record_and_audit_entry_commit_together_or_not_at_all(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    store.put_with_audit(_record("sb-a", "key000000001"),
                         AuditEntry(1.0, "me", "create", "sandbox", "sb-a"))
    _fill_up(store)
    small = _record("sb-b", "key000000002")
    huge_entry = AuditEntry(2.0, "me", "create", "sandbox", "sb-b", {"note": BIG})
    with pytest.raises(StoreUnavailable) as caught:
        store.put_with_audit(small, huge_entry)
    print(caught.value.message)
    assert caught.value.message == (f"cannot write {store.path}: database or disk is full; "
                                    "free disk space and retry; nothing was changed")
    assert [r.name for r in store.records("sandbox")] == ["sb-a"]
    assert [e.name for e in store.audit_log(10)] == ["sb-a"]
    with pytest.raises(StoreUnavailable):
        store.delete_with_audit("sandbox", "sb-a", AuditEntry(3.0, "me", "delete", "sandbox",
                                                              "sb-a", {"note": BIG}))
    assert [r.name for r in store.records("sandbox")] == ["sb-a"]
    assert [e.action for e in store.audit_log(10)] == ["create"]
    # The record alone fits: it is the transaction that kept it out above.
    store.put(small)
    assert [r.name for r in store.records("sandbox")] == ["sb-a", "sb-b"]
    store.close()


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield


@contextlib.asynccontextmanager
async def _api(store: Store) -> AsyncIterator[tuple[httpx.AsyncClient, ControlPlane]]:
    control = ControlPlane(PROJECT, store, MemoryRuntime(), RoutesBroadcaster(), HopLog(1000))
    reconciler = Reconciler(control)
    reconciler.start()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = _Server(uvicorn.Config(create_app(control, TOKEN), log_level="critical",
                                    lifespan="off"))
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        async with httpx.AsyncClient(base_url=url,
                                     headers={"authorization": f"Bearer {TOKEN}"}) as client:
            yield client, control
    finally:
        server.should_exit = True
        await task
        await reconciler.close()


def _contents(store: Store) -> tuple[list[Record], list[Record], list[AuditEntry]]:
    return store.records("sandbox"), store.records("routegroup"), store.audit_log(1000)


async def test_a_full_disk_is_a_json_503_and_changes_nothing(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    async with _api(store) as (client, _):
        assert (await client.put("/v1/sandboxes/sb-a", json={
            "forks": [{"service": "web"}]})).status_code == 201
        before = _contents(store)
        _fill_up(store)
        refused = [
            await client.put("/v1/sandboxes/sb-b", json={
                "forks": [{"service": "web", "env": {"BIG": BIG}}]}),
            await client.put("/v1/sandboxes/sb-a", json={
                "forks": [{"service": "web", "env": {"BIG": BIG}}]}),
        ]
        for resp in refused:
            print(resp.status_code, resp.text)
            assert resp.status_code == 503
            assert resp.headers["content-type"] == "application/json"
            assert resp.json() == {"code": "store_unavailable", "message": (
                f"cannot write {store.path}: database or disk is full; free disk space and "
                "retry; nothing was changed")}
        assert _contents(store) == before
        assert (await client.get("/v1/sandboxes/sb-a")).json()["generation"] == 1
    store.close()


async def test_a_read_only_store_is_a_json_503_and_changes_nothing(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "state.db")
    async with _api(store) as (client, _):
        assert (await client.put("/v1/sandboxes/sb-a", json={
            "forks": [{"service": "web"}]})).status_code == 201
        assert (await client.put("/v1/routegroups/g", json={
            "match": {"labels": {"feature": "x"}}})).status_code == 201
        before = _contents(store)
        store._db.execute("PRAGMA query_only = 1")  # what SQLite says for a read-only file
        refused = [
            await client.put("/v1/sandboxes/sb-b", json={"forks": [{"service": "pricing"}]}),
            await client.put("/v1/sandboxes/sb-a", json={"forks": [{"service": "pricing"}]}),
            await client.delete("/v1/sandboxes/sb-a"),
            await client.delete("/v1/routegroups/g"),
        ]
        for resp in refused:
            print(resp.request.method, resp.request.url.path, resp.status_code, resp.text)
            assert resp.status_code == 503
            body = resp.json()
            assert body["code"] == "store_unavailable"
            assert body["message"].startswith(
                f"cannot write {store.path}: attempt to write a readonly database; ")
            assert body["message"].endswith("nothing was changed")
        assert _contents(store) == before
        listed = (await client.get("/v1/sandboxes")).json()
        assert [(s["name"], s["forks"][0]["service"]) for s in listed] == [("sb-a", "web")]
    store.close()


class _BrokenStore(MemoryStore):
    """Our own interface failing in a way no one mapped."""

    def records(self, kind):  # type: ignore[no-untyped-def]
        raise RuntimeError("the store fell over")


async def test_an_unexpected_failure_is_a_json_500_not_a_text_page() -> None:
    async with _api(_BrokenStore()) as (client, _):
        resp = await client.get("/v1/sandboxes")
    print(resp.text)
    assert resp.status_code == 500
    body = resp.json()
    assert body["code"] == "internal"
    assert "GET /v1/sandboxes: RuntimeError: the store fell over" in body["message"]
