"""The router's two scans of the common case run compiled where the extension is built and in
Python elsewhere (`laneway/router/scan.py`); the tests that send requests through a router on
the fast paths run with each (`scans`), so that both are the router's behaviour."""

from __future__ import annotations

import pytest

from tests.scans import SCANS, use_scans


@pytest.fixture(params=sorted(SCANS))
def scans(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    use_scans(request.param, monkeypatch.setattr)
    return str(request.param)
