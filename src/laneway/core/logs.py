"""The time stamp at the start of every process log line: written by the local runtime, read
back by the API to cut logs by time. One format, defined once."""

from __future__ import annotations

import asyncio
import os
import re
import time
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["keep_rotated", "rotate_stdio", "stamp", "stamped_at", "unstamped"]

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


def rotate_stdio(path: Path, max_bytes: int = 8 * 1024 * 1024) -> bool:
    """Keep a long-lived process's own log (its stdout and stderr point at `path`, as `laneway
    up --detach` starts it) bounded: past `max_bytes` it becomes `<name>.1` and stdout/stderr
    are pointed at a new file. Called every few seconds; True when it rotated."""
    try:
        same = os.path.samestat(os.fstat(1), os.stat(path))
        size = os.fstat(1).st_size
    except OSError:
        return False
    if not same or size <= max_bytes:
        return False
    os.replace(path, path.with_name(path.name + ".1"))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    return True


async def keep_rotated(path: Path, every: float = 5.0) -> None:
    """`rotate_stdio(path)` every few seconds, until cancelled (the daemon and the data plane
    run it for their own logs)."""
    while True:
        rotate_stdio(path)
        await asyncio.sleep(every)
