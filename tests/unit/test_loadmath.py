"""The load step's arithmetic (core/loadmath.py): percentiles, the slice schedule, the budget."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from laneway.core.loadmath import (
    Budget,
    baseline_spread,
    evaluate_budget,
    parse_fraction,
    parse_quantile,
    parse_rate,
    parse_ratio,
    percentile,
    send_offsets,
    slice_schedule,
    summarize,
)


def test_percentiles_interpolate_between_closest_ranks_as_numpy_does() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 95) == pytest.approx(95.05)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 95) == 7.0
    assert percentile([], 95) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0  # unsorted input
    with pytest.raises(ValueError, match="outside"):
        percentile(values, 101)


@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1),
       st.floats(min_value=0, max_value=100))
def test_a_percentile_lies_within_the_values_and_grows_with_q(values: list[float],
                                                               q: float) -> None:
    p = percentile(values, q)
    assert p is not None
    assert min(values) <= p <= max(values)
    higher = percentile(values, min(100.0, q + 1))
    assert higher is not None
    assert higher >= p - 1e-9


def test_rates_ratios_and_fractions_as_users_write_them() -> None:
    assert parse_rate("50/s") == 50
    assert parse_rate("600/m") == 10
    assert parse_ratio("1.3x") == 1.3
    assert parse_ratio("1.3\u00d7") == 1.3
    assert parse_ratio(2) == 2.0
    assert parse_ratio("130%") == pytest.approx(1.3)
    assert parse_fraction("1%") == 0.01
    assert parse_fraction(0.05) == 0.05
    assert parse_quantile("p95") == 95
    assert parse_quantile("p99.9") == 99.9
    for bad, parse in (("fast", parse_rate), ("0/s", parse_rate), ("0.5x", parse_ratio),
                       ("1%", parse_ratio), ("fast", parse_ratio), ("150%", parse_fraction),
                       ("p100", parse_quantile),
                       ("q95", parse_quantile)):
        with pytest.raises(ValueError, match=r"is not|must be|at least"):
            parse(bad)  # type: ignore[operator]


def test_every_lane_gets_one_slice_per_round_in_a_rotated_order() -> None:
    lanes = ["baseline", "a", "b"]
    schedule = slice_schedule(lanes, 4)
    assert schedule == [["baseline", "a", "b"], ["a", "b", "baseline"],
                        ["b", "baseline", "a"], ["baseline", "a", "b"]]
    # Over a whole rotation each lane is first once, and follows each other lane once.
    firsts = [order[0] for order in schedule[:3]]
    assert sorted(firsts) == sorted(lanes)
    assert slice_schedule([], 3) == []


def test_requests_are_due_evenly_over_a_slice() -> None:
    assert send_offsets(50, 1.0) == [i / 50 for i in range(50)]
    assert len(send_offsets(40, 0.5)) == 20
    assert send_offsets(0.5, 1.0) == [0.0]  # at least one per slice


def rounds(rng: random.Random, count: int, per: int, mean: float,
           jitter: float) -> list[list[float]]:
    return [[max(0.1, rng.gauss(mean, jitter)) for _ in range(per)] for _ in range(count)]


def test_a_sandbox_120ms_slower_fails_its_latency_budget_with_the_figures() -> None:
    rng = random.Random(1)
    base = rounds(rng, 10, 50, 10, 2)
    slow = rounds(rng, 10, 50, 130, 2)
    outcome = evaluate_budget(base, slow, 0, Budget(95, 1.3, 0.01))
    assert outcome.outcome == "failed"
    assert outcome.failed == ("latency",)
    assert outcome.rounds_over == 10
    assert outcome.ratio is not None
    assert 9 < outcome.ratio < 12
    assert outcome.sandbox_ms is not None
    assert outcome.baseline_ms is not None
    assert 110 < outcome.sandbox_ms - outcome.baseline_ms < 130


def test_a_sandbox_like_the_baseline_passes_even_with_noisy_slices() -> None:
    rng = random.Random(2)
    base = rounds(rng, 10, 50, 5, 1)
    twin = rounds(rng, 10, 50, 5, 1)
    # Machine noise: two of the twin's slices hit a stall (a GC, another process).
    twin[3] = [v + 200 for v in twin[3]]
    twin[7] = [v + 200 for v in twin[7]]
    outcome = evaluate_budget(base, twin, 0, Budget(95, 1.3, 0.01))
    assert outcome.outcome == "passed", outcome
    assert outcome.rounds_over == 2  # over in those rounds, not in most


def test_a_ratio_over_budget_within_the_noise_floor_passes() -> None:
    # 2 ms against 1 ms is 2x, but a millisecond is no regression anyone can measure here.
    base = [[1.0] * 20 for _ in range(5)]
    sb = [[2.0] * 20 for _ in range(5)]
    assert evaluate_budget(base, sb, 0, Budget(95, 1.3, None)).outcome == "passed"
    assert evaluate_budget(base, sb, 0, Budget(95, 1.3, None, noise_floor_ms=0.5)).failed \
        == ("latency",)


def test_the_noise_is_the_baselines_own_spread_when_that_is_larger() -> None:
    # Even rounds 10 ms, odd 40 ms: the baseline itself moves by 30 ms.
    base = [[10.0 if r % 2 == 0 else 40.0] * 20 for r in range(6)]
    assert baseline_spread(base, 95) == pytest.approx(30)
    sb = [[45.0] * 20 for _ in range(6)]  # 1.125x at p95 (40): within anyway
    outcome = evaluate_budget(base, sb, 0, Budget(50, 1.3, None))
    assert outcome.noise_ms == pytest.approx(30)
    assert outcome.outcome == "passed"  # 45 vs 25 (p50): 1.8x, but 20 ms < 30 ms of noise


def test_the_error_budget_is_a_share_of_the_sandboxs_requests() -> None:
    base = [[5.0] * 100 for _ in range(2)]
    assert evaluate_budget(base, base, 2, Budget(95, 1.3, 0.01)).failed == ()  # 1%
    outcome = evaluate_budget(base, base, 3, Budget(95, 1.3, 0.01))
    assert outcome.failed == ("errors",)
    assert outcome.error_rate == pytest.approx(0.015)
    assert evaluate_budget(base, base, 50, Budget(95, 1.3, None)).outcome == "passed"


def test_no_latency_budget_checks_no_latency() -> None:
    base = [[5.0] * 10]
    slow = [[500.0] * 10]
    assert evaluate_budget(base, slow, 0, Budget(95, None, None)).outcome == "passed"


def test_a_summary_counts_requests_errors_and_percentiles() -> None:
    summary = summarize([float(v) for v in range(1, 101)], 3)
    assert (summary.requests, summary.errors) == (100, 3)
    assert summary.error_rate == pytest.approx(0.03)
    assert summary.to_json()["p95_ms"] == pytest.approx(95.05)
    assert summarize([], 0).to_json()["p50_ms"] is None
