"""Shared fixtures: real upstream HTTP servers on loopback, and a leak check on tasks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

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
