"""Durations as users write them: `45s`, `30m`, `2h`, `1d`, `1h30m`."""

from __future__ import annotations

import re

__all__ = ["format_duration", "parse_duration"]

_PART_RE = re.compile(r"(\d+)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in `text`; raises ValueError with the accepted forms."""
    compact = text.strip().replace(" ", "")
    pos = 0
    total = 0.0
    for match in _PART_RE.finditer(compact):
        if match.start() != pos:
            break
        total += int(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not compact or pos != len(compact):
        raise ValueError(f"{text!r} is not a duration; use a number and a unit: 45s, 30m, 2h, 1d")
    if total <= 0:
        raise ValueError(f"{text!r} must be longer than zero")
    return total


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s" if seconds % 60 else f"{seconds // 60}m"
    if seconds < 86400:
        hours, rest = divmod(seconds, 3600)
        return f"{hours}h{rest // 60:02d}m" if rest >= 60 else f"{hours}h"
    days, rest = divmod(seconds, 86400)
    return f"{days}d{rest // 3600}h" if rest >= 3600 else f"{days}d"
