"""The arithmetic of an experiment's load step, on plain numbers: percentiles, the slice
schedule that interleaves the baseline and the sandboxes, and the latency/error budget.

The load generator (`client/loadgen.py`) measures; this module decides. Nothing here reads a
clock or a socket, so every rule is tested exhaustively in `tests/unit/test_loadmath.py`.

Why the budget rule has three parts: on a shared 2-core machine one slow second (a compile, a
GC, another test) can put the 95th percentile of any lane far off. A sandbox fails its latency
budget only when (1) its percentile over the whole step exceeds the baseline's by more than the
budget ratio, (2) the difference is larger than the noise (a floor, or how far the baseline's
own figure moves from round to round, whichever is larger), and (3) it is over in
more than half of the rounds, each round comparing slices taken a moment apart (a round is
one short slice per lane). A real regression (a fork that adds 120 ms) passes all three at
once; a burst of machine noise does not.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "NOISE_FLOOR_MS",
    "Budget",
    "BudgetOutcome",
    "LaneSummary",
    "baseline_spread",
    "evaluate_budget",
    "min_requests",
    "parse_fraction",
    "parse_quantile",
    "parse_rate",
    "parse_ratio",
    "percentile",
    "send_offsets",
    "slice_schedule",
    "summarize",
]

NOISE_FLOOR_MS = 5.0
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|second|m|min|minute)\s*$")
_RATIO_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*[x\u00d7]\s*$")
_FRACTION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$")
_QUANTILE_RE = re.compile(r"^p(\d{1,2}(?:\.\d+)?)$")


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by linear interpolation between closest ranks (numpy's
    default, so figures agree with what users compute themselves); None for no values."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def parse_rate(text: str) -> float:
    """Requests per second in `50/s` or `600/m`; ValueError with the accepted forms."""
    match = _RATE_RE.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a rate; write requests per second or minute: 50/s, "
                         "600/m")
    value = float(match.group(1)) / (60 if match.group(2).startswith("m") else 1)
    if value <= 0:
        raise ValueError(f"{text!r} must be more than zero")
    return value


def parse_ratio(text: str | float) -> float:
    """`1.3x`, `130%` or a bare 1.3 as 1.3; at least 1 (a budget below the baseline itself fails
    every sandbox, the baseline's twin included)."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        value = float(text)
    else:
        match = _RATIO_RE.match(str(text)) or _FRACTION_RE.match(str(text))
        if not match:
            raise ValueError(f"{text!r} is not a ratio to the baseline; write e.g. 1.3x (or "
                             "130%)")
        value = float(match.group(1))
        if match.re is _FRACTION_RE and match.group(2):  # 130%: the baseline's and 30 % more
            value /= 100
    if value < 1:
        raise ValueError(f"{text!r}: a ratio to the baseline must be at least 1x")
    return value


def parse_fraction(text: str | float) -> float:
    """`1%` as 0.01, a bare number as itself (0.01); within 0..1."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        value = float(text)
    else:
        match = _FRACTION_RE.match(str(text))
        if not match:
            raise ValueError(f"{text!r} is not a share of the requests; write e.g. 1% or 0.01")
        value = float(match.group(1)) / (100 if match.group(2) else 1)
    if not 0 <= value <= 1:
        raise ValueError(f"{text!r} must be between 0% and 100%")
    return value


def parse_quantile(name: str) -> float:
    """`p95` as 95.0 (p50 .. p99.9)."""
    match = _QUANTILE_RE.match(name)
    if not match or not 0 < float(match.group(1)) < 100:
        raise ValueError(f"{name!r} is not a percentile; use p50, p90, p95, p99, ...")
    return float(match.group(1))


def slice_schedule(lanes: Sequence[str], rounds: int) -> list[list[str]]:
    """The order of the lanes' slices, round by round: every lane once per round, in the
    orders of a balanced Latin square (Williams): over a cycle of orders each lane comes at
    every position alike and directly after every other lane alike, so that a slow lane's
    stragglers (requests still in flight when the next slice starts) fall on every other lane
    in turn, never always on the same one. A cycle is n orders for n lanes, 2n when n is odd."""
    if not lanes:
        return []
    n = len(lanes)
    first = [0]
    low, high = 1, n - 1
    while len(first) < n:
        first.append(low)
        low += 1
        if len(first) < n:
            first.append(high)
            high -= 1
    cycle = [[(i + r) % n for i in first] for r in range(n)]
    if n % 2:
        cycle += [list(reversed(order)) for order in cycle]
    return [[lanes[i] for i in cycle[r % len(cycle)]] for r in range(rounds)]


def send_offsets(rate: float, slice_s: float, index: int = 0) -> list[float]:
    """When each request of a lane's `index`-th slice is due, in seconds from that slice's
    start. A lane's slices are laid end to end as one stretch of its own time, its requests
    evenly spaced at `rate` along it (open loop: the schedule never waits for answers), so a
    lane gets exactly rate x duration requests whatever the slice's length; a slice shorter
    than the gap between two requests may get none."""
    eps = 1e-9  # k / rate is inexact: 0.1 * 30 must count as 3
    begin, end = index * slice_s, (index + 1) * slice_s
    first, stop = math.ceil(begin * rate - eps), math.ceil(end * rate - eps)
    return [max(0.0, k / rate - begin) for k in range(first, stop)]


def min_requests(quantile: float) -> int:
    """How many requests a lane needs before its `quantile` is a figure worth a verdict: with
    fewer, the percentile is one of the top two samples, set by whichever request a burst of
    machine noise happened to hit (p50: 4, p95: 40, p99: 200)."""
    return math.ceil(2 / (1 - quantile / 100) - 1e-9)


@dataclass(frozen=True, slots=True)
class LaneSummary:
    requests: int
    errors: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def to_json(self) -> dict[str, float | int | None]:
        return {"requests": self.requests, "errors": self.errors,
                "error_rate": round(self.error_rate, 5), "p50_ms": _round(self.p50_ms),
                "p95_ms": _round(self.p95_ms), "p99_ms": _round(self.p99_ms)}


def summarize(latencies_ms: Sequence[float], errors: int) -> LaneSummary:
    """Figures of one lane or slice: `latencies_ms` of every request (failed ones too: a
    timeout counts at its full wait), `errors` of them failed."""
    return LaneSummary(len(latencies_ms), errors, percentile(latencies_ms, 50),
                       percentile(latencies_ms, 95), percentile(latencies_ms, 99))


@dataclass(frozen=True, slots=True)
class Budget:
    quantile: float = 95.0  # which percentile the ratio is about
    ratio: float | None = 1.3  # None: no latency budget
    errors: float | None = 0.01  # share of failed requests allowed; None: no error budget
    noise_floor_ms: float = NOISE_FLOOR_MS

    @property
    def name(self) -> str:
        return f"p{self.quantile:g}"


@dataclass(frozen=True, slots=True)
class BudgetOutcome:
    outcome: Literal["passed", "failed"]
    failed: tuple[Literal["latency", "errors"], ...]
    quantile: str  # "p95"
    sandbox_ms: float | None
    baseline_ms: float | None
    ratio: float | None
    budget_ratio: float | None
    noise_ms: float
    rounds_over: int
    rounds: int
    error_rate: float
    budget_errors: float | None

    def to_json(self) -> dict[str, object]:
        return {"outcome": self.outcome, "failed": list(self.failed), "quantile": self.quantile,
                "sandbox_ms": _round(self.sandbox_ms), "baseline_ms": _round(self.baseline_ms),
                "ratio": None if self.ratio is None else round(self.ratio, 3),
                "budget_ratio": self.budget_ratio, "noise_ms": round(self.noise_ms, 2),
                "rounds_over": self.rounds_over, "rounds": self.rounds,
                "error_rate": round(self.error_rate, 5), "budget_errors": self.budget_errors}


def baseline_spread(rounds: Sequence[Sequence[float]], q: float) -> float:
    """How far the baseline's percentile moves from round to round: the noise this machine
    puts on the figure right now. Twice the median distance of the rounds' figures from their
    median (about 1.35 standard deviations for well-behaved noise). A median, so that a stall
    in a few rounds does not become the noise: a spread taken from halves of the rounds (the
    even against the odd ones) is set by whichever half holds the stall, and 150 ms of such
    "noise" would hide a fork that adds 120 ms. 0 with fewer than two rounds."""
    figures = [p for p in (percentile(r, q) for r in rounds) if p is not None]
    if len(figures) < 2:
        return 0.0
    middle = statistics.median(figures)
    return 2 * statistics.median(abs(f - middle) for f in figures)


def evaluate_budget(baseline: Sequence[Sequence[float]], sandbox: Sequence[Sequence[float]],
                    sandbox_errors: int, budget: Budget) -> BudgetOutcome:
    """The budget's outcome for one sandbox. `baseline` and `sandbox`: latencies (ms) per
    round, the same rounds for both (round i of one was measured beside round i of the other);
    `sandbox_errors`: how many of the sandbox's requests failed."""
    q = budget.quantile
    base_all = [v for r in baseline for v in r]
    sb_all = [v for r in sandbox for v in r]
    base_p, sb_p = percentile(base_all, q), percentile(sb_all, q)
    noise = max(budget.noise_floor_ms, baseline_spread(baseline, q))
    ratio = sb_p / base_p if sb_p is not None and base_p else None
    # The rounds with figures on both sides: at a low rate a quarter-second slice may hold no
    # request, and an empty round is neither over nor under.
    paired = [(bp, sp) for bp, sp in ((percentile(b, q), percentile(s, q))
                                      for b, s in zip(baseline, sandbox, strict=False))
              if bp is not None and sp is not None]
    over_rounds = sum(1 for bp, sp in paired
                      if budget.ratio is not None and _over(sp, bp, budget.ratio, noise))
    failed: list[Literal["latency", "errors"]] = []
    if budget.ratio is not None and sb_p is not None and base_p is not None and \
            _over(sb_p, base_p, budget.ratio, noise) and over_rounds * 2 > len(paired):
        failed.append("latency")
    error_rate = sandbox_errors / len(sb_all) if sb_all else 0.0
    if budget.errors is not None and error_rate > budget.errors:
        failed.append("errors")
    return BudgetOutcome("failed" if failed else "passed", tuple(failed), budget.name, sb_p,
                         base_p, ratio, budget.ratio, noise, over_rounds, len(paired),
                         error_rate, budget.errors)


def _over(sandbox_ms: float, baseline_ms: float, ratio: float, noise_ms: float) -> bool:
    return sandbox_ms > baseline_ms * ratio and sandbox_ms - baseline_ms > noise_ms


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
