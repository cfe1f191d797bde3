"""The router's two scans of the common case run compiled where the extension is built and in
Python elsewhere (`laneway/router/scan.py`); the tests that send requests through a router on
the fast paths run with each (`scans`), so that both are the router's behaviour."""

from __future__ import annotations

import pytest

from laneway.core.baggage import baggage_key
from laneway.router import client, scan, upstream

SCANS = {"python": (scan.py_scan_request, scan.py_simple_response, scan.py_simple_answer,
                    baggage_key)}
if scan.COMPILED:
    SCANS["compiled"] = (scan.scan_request, scan.simple_response, scan.simple_answer,
                         scan.quick_key)


@pytest.fixture(params=sorted(SCANS))
def scans(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    scan_request, simple_response, simple_answer, quick_key = SCANS[request.param]
    monkeypatch.setattr(client, "scan_request", scan_request)
    monkeypatch.setattr(scan, "simple_response", simple_response)  # what the tests call
    monkeypatch.setattr(upstream, "simple_answer", simple_answer)
    monkeypatch.setattr(client, "quick_key", quick_key)
    return str(request.param)
