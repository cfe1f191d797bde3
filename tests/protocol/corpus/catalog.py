"""Every class of the corpus and its cases, in one place, for the players outside pytest
(bench/conformance.py against HAProxy, tests/protocol/fuzz_router.py's atheris seeds)."""

from __future__ import annotations

from tests.protocol.corpus import (
    test_baggage,
    test_codings,
    test_connection,
    test_framing,
    test_host,
    test_limits,
    test_smuggling,
    test_timeouts,
    test_upgrade,
)
from tests.protocol.corpus.harness import Case

__all__ = ["CLASSES"]

CLASSES: dict[str, tuple[Case, ...]] = {
    "framing": tuple(test_framing.CASES),
    "smuggling": tuple(test_smuggling.CASES),
    "connection": tuple(test_connection.CASES),
    "host": tuple(test_host.CASES),
    "codings": tuple(test_codings.CASES),
    "upgrade": tuple(test_upgrade.CASES),
    "limits": tuple(test_limits.CASES),
    "timeouts": tuple(test_timeouts.CASES),
    "baggage": tuple(test_baggage.CASES),
}
