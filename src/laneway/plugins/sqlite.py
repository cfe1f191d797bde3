"""`sqlite`: a per-sandbox copy of a baseline SQLite file.

The copy uses SQLite's online backup API, which reads a consistent snapshot while the baseline
keeps writing; the baseline file is opened read-only.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from laneway.core.resources import PluginError, ResourceContext

__all__ = ["SqlitePlugin"]


class SqliteParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="the baseline's SQLite file (relative to laneway.yaml)")


def _copy(source: Path, target: Path) -> None:
    if not source.exists():
        raise PluginError(f"sqlite: {source} does not exist; params.path must name the "
                          "baseline's database file")
    target.parent.mkdir(parents=True, exist_ok=True)
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    dst = sqlite3.connect(target)
    try:
        src.backup(dst)
    except sqlite3.Error as exc:
        target.unlink(missing_ok=True)
        raise PluginError(f"sqlite: cannot copy {source}: {exc}") from exc
    finally:
        dst.close()
        src.close()


class SqlitePlugin:
    name = "sqlite"
    params_model = SqliteParams

    async def create(self, ctx: ResourceContext, params: Any) -> tuple[dict[str, str],
                                                                          dict[str, Any]]:
        target = ctx.state_dir / f"{ctx.resource}.sqlite"
        await asyncio.to_thread(_copy, Path(params.path), target)
        return {"path": str(target)}, {"path": str(target)}

    async def delete(self, ctx: ResourceContext, params: Any, state: dict[str, Any]) -> None:
        _remove(Path(state.get("path") or ctx.state_dir / f"{ctx.resource}.sqlite"))


def _remove(target: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)
