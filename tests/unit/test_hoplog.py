"""The hop log's trace ids by prefix (`HopLog.whole_trace_id`), which the local API and the
operator's both answer `?trace=` with."""

from __future__ import annotations

import pytest

from laneway.core.hoplog import HopLog
from laneway.core.hops import Hop


def hop(trace: str) -> Hop:
    return Hop(at=1.0, trace_id=trace, parent_id="", service="s", routing_key="", destination=
               "baseline", fork="", status=200, duration_ms=1.0, method="GET", path="/")


def test_a_unique_start_names_its_trace_and_an_ambiguous_one_names_the_candidates() -> None:
    log = HopLog(10)
    log.add([hop("4bf92f3577b34da6a3ce929d0e0e4736"), hop("4bf92f35aaaaaaaaaaaaaaaaaaaaaaaa"),
             hop("00f067aa0ba902b700f067aa0ba902b7")])
    assert log.whole_trace_id("00f067") == "00f067aa0ba902b700f067aa0ba902b7"
    assert log.whole_trace_id("4bf92f3577") == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert log.whole_trace_id("ffff") == "ffff"  # nothing kept starts so: no hops, no error
    with pytest.raises(ValueError, match=r"'4bf92f35' is the start of 2 traces"):
        log.whole_trace_id("4bf92f35")
