"""The router's scans of the common case, compiled or in Python (`laneway/router/scan.py`), and
where the router looks each one up: one table for the tests that run with each
(`tests/protocol/conftest.py`, `scans`) and for `bench/hotpath.py`, which prints both."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from laneway.core.baggage import baggage_key
from laneway.router import client, scan, upstream

__all__ = ["SCANS", "use_scans"]

# kind -> (module, the name it is looked up by there, the function)
SCANS: dict[str, list[tuple[Any, str, Callable[..., Any]]]] = {
    "python": [(client, "scan_request", scan.py_scan_request),
               (upstream, "simple_answer", scan.py_simple_answer),
               (client, "quick_key", baggage_key),
               (scan, "simple_response", scan.py_simple_response)],  # what the tests call
}
if scan.COMPILED:
    SCANS["compiled"] = [(client, "scan_request", scan.scan_request),
                         (upstream, "simple_answer", scan.simple_answer),
                         (client, "quick_key", scan.quick_key),
                         (scan, "simple_response", scan.simple_response)]


def use_scans(kind: str, assign: Callable[[Any, str, Any], None] = setattr) -> None:
    """The router uses the `kind` scans from now on (`assign`: a monkeypatch's setattr, so
    that a test's change is undone after it)."""
    for module, name, function in SCANS[kind]:
        assign(module, name, function)
