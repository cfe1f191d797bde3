"""The `Store` interface and its two embedded implementations: in memory and SQLite.

The store holds what users asked for (sandboxes, route groups) and the audit log; everything the
runtime knows is rebuilt from it by the reconciler, so a restarted daemon converges again.
Calls are synchronous: SQLite on a local file answers in microseconds, and the API serialises
writes through one connection. A shared Postgres store will need the async variant.

Faults of the file are mapped here, once: a damaged or foreign `state.db` is `StoreCorrupt` at
open (the daemon refuses to start and says how to recover; the file is never touched), and a
write that the disk refuses (full, read-only, I/O error) is `StoreUnavailable`, which the API
answers as JSON 503. A record and its audit entry are written in one transaction.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shlex
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from laneway.control.errors import StoreUnavailable

__all__ = ["AuditEntry", "MemoryStore", "Record", "SqliteStore", "Store", "StoreCorrupt"]

Kind = Literal["sandbox", "routegroup"]


def _new_uid() -> str:
    return secrets.token_hex(6)


@dataclass(slots=True)
class Record:
    """A stored sandbox or route group: the spec as applied, and what laneway added to it.

    `uid` names the incarnation: it is made when the record is created and kept through its
    updates, so a sandbox deleted and re-created under the same name is told apart from the old
    one by everything that was made from the old record (units, caches, routes).
    """

    kind: Kind
    name: str
    spec: dict[str, Any]
    routing_key: str
    created_at: float
    updated_at: float
    generation: int = 1
    expires_at: float | None = None
    uid: str = field(default_factory=_new_uid)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: float
    principal: str
    action: str
    kind: str
    name: str
    detail: dict[str, Any] = field(default_factory=dict)


class StoreCorrupt(Exception):
    """The store's file is damaged or is not a laneway store; found when it is opened."""

    def __init__(self, path: Path, reason: str, companions: list[Path] | None = None) -> None:
        self.path = path
        self.reason = reason
        # A crashed daemon leaves its write-ahead log (`companions`) beside the file; moved
        # without it, the log would be replayed into the new, empty store.
        files = [path, *(companions or [])]
        moves = " && ".join(f"mv {shlex.quote(str(f))} {shlex.quote(str(f) + '.corrupt')}"
                            for f in files)
        super().__init__(
            f"the store {path} is corrupt: {reason}. Move it aside, e.g. `{moves}`, and run "
            "`laneway up` again: sandboxes stored in it are lost; laneway deletes nothing "
            "itself")


class Store(Protocol):
    def get(self, kind: Kind, name: str) -> Record | None: ...

    def records(self, kind: Kind) -> list[Record]: ...

    def put(self, record: Record) -> None: ...

    def delete(self, kind: Kind, name: str) -> bool: ...

    def put_with_audit(self, record: Record, entry: AuditEntry) -> None:
        """Write the record and its audit entry together, or neither."""

    def delete_with_audit(self, kind: Kind, name: str, entry: AuditEntry) -> bool:
        """Delete the record and write its audit entry together, or neither; False (and no
        audit entry) when there was no such record."""

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

    def runs_with_status(self, status: str) -> list[dict[str, Any]]:
        """Every run whose report has this `status` (a starting daemon looks for `running`)."""

    def put_experiment(self, report: dict[str, Any]) -> None: ...

    def get_experiment(self, experiment_id: str) -> dict[str, Any] | None: ...

    def experiments(self, limit: int) -> list[dict[str, Any]]:
        """The newest `limit` experiment reports, newest first."""

    def close(self) -> None: ...


class MemoryStore:
    def __init__(self) -> None:
        self._records: dict[tuple[str, str], Record] = {}
        self._audit: list[AuditEntry] = []
        self._runs: dict[str, dict[str, Any]] = {}
        self._resources: dict[tuple[str, str], dict[str, Any]] = {}
        self._experiments: dict[str, dict[str, Any]] = {}

    def put_experiment(self, report: dict[str, Any]) -> None:
        self._experiments[report["id"]] = report

    def get_experiment(self, experiment_id: str) -> dict[str, Any] | None:
        return self._experiments.get(experiment_id)

    def experiments(self, limit: int) -> list[dict[str, Any]]:
        return sorted(self._experiments.values(), key=lambda r: -float(r["started_at"]))[:limit]

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

    def runs_with_status(self, status: str) -> list[dict[str, Any]]:
        return [r for r in self._runs.values() if r.get("status") == status]

    def get(self, kind: Kind, name: str) -> Record | None:
        return self._records.get((kind, name))

    def records(self, kind: Kind) -> list[Record]:
        return sorted((r for (k, _), r in self._records.items() if k == kind),
                      key=lambda r: r.name)

    def put(self, record: Record) -> None:
        self._records[(record.kind, record.name)] = record

    def delete(self, kind: Kind, name: str) -> bool:
        return self._records.pop((kind, name), None) is not None

    def put_with_audit(self, record: Record, entry: AuditEntry) -> None:
        self.put(record)
        self.audit(entry)

    def delete_with_audit(self, kind: Kind, name: str, entry: AuditEntry) -> bool:
        if not self.delete(kind, name):
            return False
        self.audit(entry)
        return True

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
    uid TEXT,
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
CREATE TABLE IF NOT EXISTS experiments (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
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
_TABLES = ("records", "resources", "runs", "experiments", "audit")
_RECORD_COLUMNS = ("kind, name, spec, routing_key, created_at, updated_at, generation, "
                   "expires_at, uid")

# What to do about a failed access, by SQLite's primary result code.
_HINTS = {
    sqlite3.SQLITE_FULL: "free disk space and retry",
    sqlite3.SQLITE_READONLY: "make the file and its folder writable by this user and retry",
    sqlite3.SQLITE_IOERR: "check the disk (`dmesg` shows I/O errors) and retry",
    sqlite3.SQLITE_BUSY: "another process holds the database; retry",
    sqlite3.SQLITE_LOCKED: "another process holds the database; retry",
    sqlite3.SQLITE_CANTOPEN: "check that its folder exists and belongs to this user",
    sqlite3.SQLITE_PERM: "check that the file and its folder belong to this user",
    sqlite3.SQLITE_CORRUPT: "the file is damaged: stop laneway (`laneway down`), move the file "
                            "aside and run `laneway up` again",
    sqlite3.SQLITE_NOTADB: "the file is damaged: stop laneway (`laneway down`), move the file "
                           "aside and run `laneway up` again",
}
_DAMAGED = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _primary_code(exc: sqlite3.Error) -> int:
    # Python reports SQLite's extended code (SQLITE_IOERR_WRITE, ...); its low byte is the class.
    return int(getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF


def _check_sound(path: Path) -> None:
    """Read all of an existing store through a read-only connection, which cannot write the
    file (not even a checkpoint of a leftover write-ahead log when it closes)."""
    if not path.exists():
        return
    # Those that were there before this check opened the file (it may create empty ones).
    companions = [p for p in (Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise _unavailable(path, "open", exc) from exc
    try:
        problems = [str(row[0]) for row in db.execute("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise StoreCorrupt(path, "; ".join(problems[:3]), companions)
        present = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE "
                                                "type = 'table'")}
        for table in _TABLES:
            if table in present:
                for _ in db.execute(f"SELECT * FROM {table}"):  # noqa: S608 (our own names)
                    pass
    except sqlite3.DatabaseError as exc:
        if _primary_code(exc) in _DAMAGED:
            raise StoreCorrupt(path, str(exc), companions) from exc
        raise _unavailable(path, "open", exc) from exc
    finally:
        db.close()


def _unavailable(path: Path, doing: str, exc: sqlite3.Error) -> StoreUnavailable:
    hint = _HINTS.get(_primary_code(exc), "retry; if it keeps failing, check the file")
    tail = "; nothing was changed" if doing == "write" else ""
    return StoreUnavailable(f"cannot {doing} {path}: {exc}; {hint}{tail}")


class SqliteStore:
    """The embedded default: one SQLite file under `.laneway/`, WAL mode.

    Opening checks the whole file before anything is written to it (`StoreCorrupt`), creates
    the tables and adds the columns that older stores lack.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        _check_sound(path)
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False,
                                       isolation_level=None)
        except sqlite3.Error as exc:
            raise _unavailable(path, "open", exc) from exc
        try:
            with self._access("open"):
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(_SCHEMA)
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    def _migrate(self) -> None:
        """Stores written before records had a `uid`: each record gets its own now."""
        with self._access("read"):
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(records)")}
        if "uid" in columns:
            return
        with self._transaction():
            self._db.execute("ALTER TABLE records ADD COLUMN uid TEXT")
            rows = self._db.execute("SELECT kind, name FROM records").fetchall()
            self._db.executemany("UPDATE records SET uid = ? WHERE kind = ? AND name = ?",
                                 [(_new_uid(), kind, name) for kind, name in rows])

    @contextlib.contextmanager
    def _access(self, doing: str) -> Iterator[None]:
        """One access under the lock, with SQLite's errors mapped to `StoreUnavailable`."""
        with self._lock:
            try:
                yield
            except sqlite3.IntegrityError:
                raise  # a constraint broken by laneway's own logic, not a fault of the file
            except sqlite3.DatabaseError as exc:
                raise _unavailable(self.path, doing, exc) from exc

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """Writes that commit together or not at all."""
        with self._access("write"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                # SQLite has already rolled back after some errors (a full disk, for one).
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise

    @staticmethod
    def _row(row: tuple[Any, ...]) -> Record:
        kind, name, spec, key, created, updated, generation, expires, uid = row
        return Record(kind, name, json.loads(spec), key, created, updated, generation, expires,
                      uid or _new_uid())

    def get(self, kind: Kind, name: str) -> Record | None:
        with self._access("read"):
            row = self._db.execute(
                f"SELECT {_RECORD_COLUMNS} FROM records WHERE kind = ? AND name = ?",  # noqa: S608
                (kind, name)).fetchone()
        return self._row(row) if row else None

    def records(self, kind: Kind) -> list[Record]:
        with self._access("read"):
            rows = self._db.execute(
                f"SELECT {_RECORD_COLUMNS} FROM records WHERE kind = ? ORDER BY name",  # noqa: S608
                (kind,)).fetchall()
        return [self._row(r) for r in rows]

    def _put(self, record: Record) -> None:
        self._db.execute(
            f"INSERT INTO records ({_RECORD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "  # noqa: S608
            "ON CONFLICT (kind, name) DO UPDATE SET spec = excluded.spec, "
            "routing_key = excluded.routing_key, updated_at = excluded.updated_at, "
            "generation = excluded.generation, expires_at = excluded.expires_at, "
            "uid = excluded.uid",
            (record.kind, record.name, json.dumps(record.spec), record.routing_key,
             record.created_at, record.updated_at, record.generation, record.expires_at,
             record.uid),
        )

    def _delete(self, kind: Kind, name: str) -> bool:
        cur = self._db.execute("DELETE FROM records WHERE kind = ? AND name = ?", (kind, name))
        return cur.rowcount > 0

    def _audit(self, entry: AuditEntry) -> None:
        self._db.execute(
            "INSERT INTO audit (at, principal, action, kind, name, detail) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (entry.at, entry.principal, entry.action, entry.kind, entry.name,
             json.dumps(entry.detail)),
        )

    def put(self, record: Record) -> None:
        with self._access("write"):
            self._put(record)

    def delete(self, kind: Kind, name: str) -> bool:
        with self._access("write"):
            return self._delete(kind, name)

    def put_with_audit(self, record: Record, entry: AuditEntry) -> None:
        with self._transaction():
            self._put(record)
            self._audit(entry)

    def delete_with_audit(self, kind: Kind, name: str, entry: AuditEntry) -> bool:
        with self._transaction():
            deleted = self._delete(kind, name)
            if deleted:
                self._audit(entry)
        return deleted

    def key_in_use(self, routing_key: str) -> bool:
        with self._access("read"):
            row = self._db.execute("SELECT 1 FROM records WHERE routing_key = ?",
                                   (routing_key,)).fetchone()
        return row is not None

    def audit(self, entry: AuditEntry) -> None:
        with self._access("write"):
            self._audit(entry)

    def audit_log(self, limit: int) -> list[AuditEntry]:
        with self._access("read"):
            rows = self._db.execute(
                "SELECT at, principal, action, kind, name, detail FROM audit "
                "ORDER BY id DESC LIMIT ?", (limit,)
            ).fetchall()
        return [AuditEntry(a, p, act, k, n, json.loads(d)) for a, p, act, k, n, d in
                reversed(rows)]

    def put_run(self, report: dict[str, Any]) -> None:
        target = report.get("sandbox") or report.get("routegroup") or ""
        with self._access("write"):
            self._db.execute(
                "INSERT INTO runs VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "report = excluded.report", (report["id"], target, report["started_at"],
                                             json.dumps(report)))

    def put_resource(self, sandbox: str, name: str, state: dict[str, Any]) -> None:
        with self._access("write"):
            self._db.execute("INSERT INTO resources VALUES (?, ?, ?) ON CONFLICT (sandbox, name) "
                             "DO UPDATE SET state = excluded.state",
                             (sandbox, name, json.dumps(state)))

    def delete_resource(self, sandbox: str, name: str) -> None:
        with self._access("write"):
            self._db.execute("DELETE FROM resources WHERE sandbox = ? AND name = ?",
                             (sandbox, name))

    def resource_states(self) -> list[tuple[str, str, dict[str, Any]]]:
        with self._access("read"):
            rows = self._db.execute("SELECT sandbox, name, state FROM resources "
                                    "ORDER BY sandbox, name").fetchall()
        return [(sb, name, json.loads(state)) for sb, name, state in rows]

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        with self._access("read"):
            row = self._db.execute("SELECT report FROM runs WHERE id = ?", (run_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def runs(self, sandbox: str | None, limit: int) -> list[dict[str, Any]]:
        with self._access("read"):
            if sandbox is None:
                rows = self._db.execute("SELECT report FROM runs ORDER BY started_at DESC "
                                        "LIMIT ?", (limit,)).fetchall()
            else:
                rows = self._db.execute("SELECT report FROM runs WHERE target = ? ORDER BY "
                                        "started_at DESC LIMIT ?", (sandbox, limit)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def runs_with_status(self, status: str) -> list[dict[str, Any]]:
        with self._access("read"):
            rows = self._db.execute("SELECT report FROM runs WHERE json_extract(report, "
                                    "'$.status') = ? ORDER BY started_at", (status,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def put_experiment(self, report: dict[str, Any]) -> None:
        with self._access("write"):
            self._db.execute(
                "INSERT INTO experiments VALUES (?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "report = excluded.report", (report["id"], str(report.get("name") or ""),
                                             report["started_at"], json.dumps(report)))

    def get_experiment(self, experiment_id: str) -> dict[str, Any] | None:
        with self._access("read"):
            row = self._db.execute("SELECT report FROM experiments WHERE id = ?",
                                   (experiment_id,)).fetchone()
        return json.loads(row[0]) if row else None

    def experiments(self, limit: int) -> list[dict[str, Any]]:
        with self._access("read"):
            rows = self._db.execute("SELECT report FROM experiments ORDER BY started_at DESC "
                                    "LIMIT ?", (limit,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def now() -> float:
    return time.time()
