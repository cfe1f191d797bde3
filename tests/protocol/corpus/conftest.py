"""The corpus runs each case against laneway's router, started in-process per case, once with
each of the router's scans (compiled and in Python: `tests/protocol/conftest.py`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from tests.protocol.corpus.harness import Case, laneway, run_case

Conform = Callable[[Case], Awaitable[None]]


@pytest.fixture
def conform(scans: str) -> Conform:
    async def check(case: Case) -> None:
        outcome = await run_case(case, laneway)
        if outcome.failures:
            pytest.fail(f"{case.name}: {case.why}\n  observed: {outcome.observed}\n  "
                        + "\n  ".join(outcome.failures), pytrace=False)

    return check
