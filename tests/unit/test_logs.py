"""The log-line stamp: what the runtime writes is what the API reads back."""

from __future__ import annotations

from laneway.core.logs import stamp, stamped_at, unstamped


def test_stamp_round_trips_to_the_millisecond() -> None:
    at = 1795000000.1234
    line = stamp(at).decode() + "pricing ERROR boom"
    assert stamped_at(line) == 1795000000.123
    assert unstamped(line) == "pricing ERROR boom"
    assert stamped_at("  continuation of a traceback") is None


def test_logs_are_cut_by_time_and_grep() -> None:
    import time

    import pytest

    from laneway.control.api import _filter, _since
    from laneway.control.errors import Invalid

    now = time.time()
    lines = [stamp(now - 600).decode() + "old ERROR\n", stamp(now - 10).decode() + "new ERROR\n",
             "  traceback line\n", stamp(now - 5).decode() + "GET / 200\n"]
    assert [unstamped(ln) for ln in _filter(lines, _since("1m"), None)] == [
        "new ERROR\n", "  traceback line\n", "GET / 200\n"]
    assert [unstamped(ln) for ln in _filter(lines, _since("1m"), "error")] == ["new ERROR\n"]
    with pytest.raises(Invalid, match="grep"):
        _filter(lines, None, "(")
    with pytest.raises(Invalid, match="since"):
        _since("yesterday-ish")
