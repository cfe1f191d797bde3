"""The time stamp at the start of every process log line: written by the local runtime, read
back by the API to cut logs by time. One format, defined once."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

__all__ = ["stamp", "stamped_at", "unstamped"]

_STAMP_RE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3})Z ")


def stamp(at: float) -> bytes:
    """The prefix of a log line read at `at` (UTC, milliseconds)."""
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at))
            + f".{int(at * 1000) % 1000:03d}Z ").encode()


def stamped_at(line: str) -> float | None:
    """When a stamped line was written (epoch seconds); None for an unstamped line."""
    match = _STAMP_RE.match(line)
    if match is None:
        return None
    return datetime.fromisoformat(match.group(1)).replace(tzinfo=UTC).timestamp()


def unstamped(line: str) -> str:
    return _STAMP_RE.sub("", line)
