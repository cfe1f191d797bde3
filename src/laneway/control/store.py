"""The `Store` interface and its two embedded implementations: in memory and SQLite.

The store holds what users asked for (sandboxes, route groups) and the audit log; everything the
runtime knows is rebuilt from it by the reconciler, so a restarted daemon converges again.
Calls are synchronous: SQLite on a local file answers in microseconds, and the API serialises
writes through one connection. A shared Postgres store will need the async variant.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

__all__ = ["AuditEntry", "MemoryStore", "Record", "SqliteStore", "Store"]

Kind = Literal["sandbox", "routegroup"]


@dataclass(slots=True)
class Record:
    """A stored sandbox or route group: the spec as applied, and what laneway added to it."""

    kind: Kind
    name: str
    spec: dict[str, Any]
    routing_key: str
    created_at: float
    updated_at: float
    generation: int = 1
    expires_at: float | None = None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: float
    principal: str
    action: str
    kind: str
    name: str
    detail: dict[str, Any] = field(default_factory=dict)


class Store(Protocol):
    def get(self, kind: Kind, name: str) -> Record | None: ...

    def records(self, kind: Kind) -> list[Record]: ...

    def put(self, record: Record) -> None: ...

    def delete(self, kind: Kind, name: str) -> bool: ...

    def key_in_use(self, routing_key: str) -> bool: ...

    def audit(self, entry: AuditEntry) -> None: ...

    def audit_log(self, limit: int) -> list[AuditEntry]: ...

    def put_run(self, report: dict[str, Any]) -> None: ...

    def put_resource(self, sandbox: str, name: str, state: dict[str, Any]) -> None: ...

    def delete_resource(self, sandbox: str, name: str) -> None: ...

    def resource_states(self) -> list[tuple[str, str, dict[str, Any]]]: ...

    def get_run(self, run_id: str) -> dict[str, Any] | None: ...

    def runs(self, sandbox: str | None, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` runs (of one sandbox or route group), newest first."""

    def close(self) -> None: ...


class MemoryStore:
    def __init__(self) -> None:
        self._records: dict[tuple[str, str], Record] = {}
        self._audit: list[AuditEntry] = []
        self._runs: dict[str, dict[str, Any]] = {}
        self._resources: dict[tuple[str, str], dict[str, Any]] = {}

    def put_run(self, report: dict[str, Any]) -> None:
        self._runs[report["id"]] = report

    def put_resource(self, sandbox: str, name: str, state: dict[str, Any]) -> None:
        self._resources[(sandbox, name)] = dict(state)

    def delete_resource(self, sandbox: str, name: str) -> None:
        self._resources.pop((sandbox, name), None)

    def resource_states(self) -> list[tuple[str, str, dict[str, Any]]]:
        return [(sb, name, dict(state)) for (sb, name), state in sorted(self._resources.items())]

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        return self._runs.get(run_id)

    def runs(self, sandbox: str | None, limit: int) -> list[dict[str, Any]]:
        found = [r for r in self._runs.values()
                 if sandbox is None or sandbox in (r.get("sandbox"), r.get("routegroup"))]
        return sorted(found, key=lambda r: r["started_at"], reverse=True)[:limit]

    def get(self, kind: Kind, name: str) -> Record | None:
        return self._records.get((kind, name))

    def records(self, kind: Kind) -> list[Record]:
        return sorted((r for (k, _), r in self._records.items() if k == kind),
                      key=lambda r: r.name)

    def put(self, record: Record) -> None:
        self._records[(record.kind, record.name)] = record

    def delete(self, kind: Kind, name: str) -> bool:
        return self._records.pop((kind, name), None) is not None

    def key_in_use(self, routing_key: str) -> bool:
        return any(r.routing_key == routing_key for r in self._records.values())

    def audit(self, entry: AuditEntry) -> None:
        self._audit.append(entry)

    def audit_log(self, limit: int) -> list[AuditEntry]:
        return self._audit[-limit:]

    def close(self) -> None:
        pass


_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    routing_key TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    generation INTEGER NOT NULL,
    expires_at REAL,
    PRIMARY KEY (kind, name)
);
CREATE TABLE IF NOT EXISTS resources (
    sandbox TEXT NOT NULL,
    name TEXT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (sandbox, name)
);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    started_at REAL NOT NULL,
    report TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    principal TEXT NOT NULL,
    action TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    detail TEXT NOT NULL
);
"""


class SqliteStore:
    """The embedded default: one SQLite file under `.laneway/`, WAL mode."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    @staticmethod
    def _row(row: tuple[Any, ...]) -> Record:
        kind, name, spec, key, created, updated, generation, expires = row
        return Record(kind, name, json.loads(spec), key, created, updated, generation, expires)

    def get(self, kind: Kind, name: str) -> Record | None:
        with self._lock:
            row = self._db.execute(
                "SELECT kind, name, spec, routing_key, created_at, updated_at, generation, "
                "expires_at FROM records WHERE kind = ? AND name = ?", (kind, name)
            ).fetchone()
        return self._row(row) if row else None

    def records(self, kind: Kind) -> list[Record]:
        with self._lock:
            rows = self._db.execute(
                "SELECT kind, name, spec, routing_key, created_at, updated_at, generation, "
                "expires_at FROM records WHERE kind = ? ORDER BY name", (kind,)
            ).fetchall()
        return [self._row(r) for r in rows]

    def put(self, record: Record) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (kind, name) DO "
                "UPDATE SET spec = excluded.spec, routing_key = excluded.routing_key, "
                "updated_at = excluded.updated_at, generation = excluded.generation, "
                "expires_at = excluded.expires_at",
                (record.kind, record.name, json.dumps(record.spec), record.routing_key,
                 record.created_at, record.updated_at, record.generation, record.expires_at),
            )

    def delete(self, kind: Kind, name: str) -> bool:
        with self._lock:
            cur = self._db.execute("DELETE FROM records WHERE kind = ? AND name = ?",
                                   (kind, name))
        return cur.rowcount > 0

    def key_in_use(self, routing_key: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM records WHERE routing_key = ?",
                                   (routing_key,)).fetchone()
        return row is not None

    def audit(self, entry: AuditEntry) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO audit (at, principal, action, kind, name, detail) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (entry.at, entry.principal, entry.action, entry.kind, entry.name,
                 json.dumps(entry.detail)),
            )

    def audit_log(self, limit: int) -> list[AuditEntry]:
        with self._lock:
            rows = self._db.execute(
                "SELECT at, principal, action, kind, name, detail FROM audit "
                "ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [AuditEntry(a, p, act, k, n, json.loads(d)) for a, p, act, k, n, d in
                reversed(rows)]

    def put_run(self, report: dict[str, Any]) -> None:
        target = report.get("sandbox") or report.get("routegroup") or ""
        with self._lock:
            self._db.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "report = excluded.report", (report["id"], target, report["started_at"],
                                             json.dumps(report)))

    def put_resource(self, sandbox: str, name: str, state: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute("INSERT INTO resources VALUES (?, ?, ?) ON CONFLICT (sandbox, name) "
                             "DO UPDATE SET state = excluded.state",
                             (sandbox, name, json.dumps(state)))

    def delete_resource(self, sandbox: str, name: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM resources WHERE sandbox = ? AND name = ?",
                             (sandbox, name))

    def resource_states(self) -> list[tuple[str, str, dict[str, Any]]]:
        with self._lock:
            rows = self._db.execute("SELECT sandbox, name, state FROM resources "
                                    "ORDER BY sandbox, name").fetchall()
        return [(sb, name, json.loads(state)) for sb, name, state in rows]

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT report FROM runs WHERE id = ?", (run_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def runs(self, sandbox: str | None, limit: int) -> list[dict[str, Any]]:
        with self._lock:
            if sandbox is None:
                rows = self._db.execute("SELECT report FROM runs ORDER BY started_at DESC "
                                        "LIMIT ?", (limit,)).fetchall()
            else:
                rows = self._db.execute("SELECT report FROM runs WHERE target = ? ORDER BY "
                                        "started_at DESC LIMIT ?", (sandbox, limit)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def now() -> float:
    return time.time()
