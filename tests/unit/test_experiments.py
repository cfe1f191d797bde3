"""The experiment file (core/experiments.py) and what its report says
(core/experiment_report.py): verdicts, sentences, Markdown, abandoned reports."""

from __future__ import annotations

from typing import Any

import pytest

from laneway.core.experiment_report import (
    as_read,
    cells,
    compact,
    conclude,
    render_markdown,
    round_table,
    row_verdict,
)
from laneway.core.experiments import interpolate_request, read_experiment
from laneway.core.spec import SpecError

GOOD = """
name: pricing-approaches
sandboxes: [approach-a, approach-b]
tests: [python, -m, pytest, -q, tests/e2e]
load:
  request: GET ${services.web.url}/quote?item=book
  rate: 50/s
  duration: 20s
  budget: {p95: 1.3x, errors: 1%}
diff: true
"""


def test_the_issues_example_parses() -> None:
    spec = read_experiment(GOOD, "experiment.yaml")
    assert spec.targets == [("sandbox", "approach-a"), ("sandbox", "approach-b")]
    assert spec.load is not None
    assert (spec.load.method, spec.load.rate, spec.load.duration, spec.load.rounds) == (
        "GET", 50.0, 20.0, 80)  # in 0.25 s slices
    assert (spec.load.budget.quantile, spec.load.budget.ratio, spec.load.budget.errors) == (
        95.0, 1.3, 0.01)
    assert spec.diff


@pytest.mark.parametrize(("change", "message"), [
    (("50/s", "fast"), "load.rate: 'fast' is not a rate"),
    (("1.3x", "quick"), "load.budget: p95: 'quick' is not a ratio"),
    (("p95:", "p95x:"), "load.budget: p95x: 'p95x' is not a percentile"),
    (("errors: 1%", "errs: 1%"), "load.budget: unknown field 'errs'"),
    (("rate:", "rte:"), "load.rte: unknown field; did you mean 'rate'?"),
    (("GET ", "GRAB "), "load.request: 'GRAB "),
    (("${services.web.url}", "ftp://x"), "the URL must be http://"),
    (("duration: 20s", "duration: soon"), "load.duration: 'soon' is not a duration"),
    (("[approach-a, approach-b]", "[approach-a, approach-a]"), "sandboxes: names a target "
     "more than once"),
    (("[approach-a, approach-b]", "[Approach-A]"), "sandboxes: 'Approach-A' must be a DNS"),
    (("[approach-a, approach-b]", "[]"), "name at least one sandbox"),
    (("rate: 50/s", "rate: 5000/s"), "at most 2000/s per lane"),
    (("duration: 20s", "duration: 20s\n  slice: 10ms"), "slice (0.01s) must be at least 0.05s"),
    (("duration: 20s", "duration: 100ms"), "load: the default slice (0.25s) must not be longer "
     "than duration (0.1s): give a longer duration"),
    (("duration: 20s", "duration: 1s\n  slice: 2s"), "load: slice (2s) must not be longer "
     "than duration (1s): give a longer duration or a shorter slice"),
    (("tests: [python, -m, pytest, -q, tests/e2e]\n", ""), "diff: the diff replays the "
     "requests the tests made"),
])
def test_bad_files_name_the_field(change: tuple[str, str], message: str) -> None:
    with pytest.raises(SpecError) as caught:
        read_experiment(GOOD.replace(*change), "experiment.yaml")
    assert message in caught.value.render()
    assert caught.value.render().startswith("experiment.yaml: ")


def test_nothing_to_check_is_refused() -> None:
    with pytest.raises(SpecError, match="nothing to check"):
        read_experiment("name: x\nsandboxes: [a]\n", "e.yaml")


def test_request_templates_take_the_services_public_addresses() -> None:
    services = {"web": "http://127.0.0.1:19401"}
    assert interpolate_request("${services.web.url}/quote", services) == \
        "http://127.0.0.1:19401/quote"
    assert interpolate_request("http://${services.web.host}:${services.web.port}/", services) \
        == "http://127.0.0.1:19401/"
    with pytest.raises(SpecError, match=r"no service 'shop'.*services: web"):
        interpolate_request("${services.shop.url}/", services)


def budget(outcome: str = "passed", failed: tuple[str, ...] = (), sandbox: float = 12.0,
           baseline: float = 11.0) -> dict[str, Any]:
    return {"outcome": outcome, "failed": list(failed), "quantile": "p95",
            "sandbox_ms": sandbox, "baseline_ms": baseline, "ratio": sandbox / baseline,
            "budget_ratio": 1.3, "noise_ms": 5.0, "rounds_over": 9, "rounds": 10,
            "error_rate": 0.0, "budget_errors": 0.01}


def load(p95: float, requests: int = 1000, errors: int = 0) -> dict[str, Any]:
    return {"requests": requests, "errors": errors, "error_rate": errors / requests,
            "p50_ms": p95 / 2, "p95_ms": p95, "p99_ms": p95 * 1.2, "ratio": p95 / 118}


def run_of(verdict: str = "passed", run_id: str = "r1") -> dict[str, Any]:
    return {"verdict": verdict, "run_id": run_id, "exit_code": 0 if verdict == "passed" else 1,
            "totals": {"tests": 5, "failures": 2, "errors": 0} if verdict == "failed" else
            {"tests": 5, "failures": 0, "errors": 0},
            "failures": [{"name": "t::test_quote", "message": "assert"}] if verdict == "failed"
            else [], "unreached": ["pricing@x"] if verdict == "vacuous" else []}


def report() -> dict[str, Any]:
    return {"id": "x1", "name": "pricing-approaches", "status": "finished",
            "rows": [
                {"target": "baseline", "kind": "baseline", "load": load(118)},
                {"target": "approach-a", "kind": "sandbox", "tests": run_of(),
                 "load": load(120), "budget": budget(sandbox=120, baseline=118),
                 "diff": {"red": 0, "yellow": 2, "summary": "..."}},
                {"target": "approach-b", "kind": "sandbox", "tests": run_of("passed", "r2"),
                 "load": load(212), "budget": budget("failed", ("latency",), 212, 118),
                 "diff": {"red": 0, "yellow": 0, "summary": "..."}},
                {"target": "approach-c", "kind": "sandbox", "tests": run_of("failed", "r3"),
                 "load": load(119), "budget": budget(sandbox=119, baseline=118)},
                {"target": "approach-d", "kind": "sandbox", "tests": run_of("vacuous", "r4")},
            ],
            "load": {"request": "GET http://127.0.0.1:1/quote", "rate": 50.0,
                     "duration_s": 20.0, "slice_s": 1.0, "rounds": 20,
                     "budget": {"quantile": "p95", "ratio": 1.3, "errors": 0.01},
                     "slices": [{"round": 0, "lane": "baseline", "requests": 50, "errors": 0,
                                 "p50_ms": 50.0, "p95_ms": 110.0, "p99_ms": 130.0}],
                     "overhead": {"send_lag_p50_ms": 0.1, "send_lag_p99_ms": 1.2}}}


def test_each_sandbox_gets_its_verdict_and_one_plain_sentence() -> None:
    done = conclude(report())
    rows = {r["target"]: r for r in done["rows"]}
    assert done["verdict"] == "failed"
    assert [rows[n]["verdict"] for n in ("baseline", "approach-a", "approach-b", "approach-c",
                                         "approach-d")] == [
        "reference", "passed", "failed", "failed", "failed"]
    assert rows["approach-a"]["sentence"].startswith("approach-a passed every check")
    assert rows["approach-b"]["sentence"] == (
        "approach-b failed the latency budget under load: p95 212 ms against the baseline's "
        "118 ms, 1.8\u00d7 with a budget of 1.3\u00d7 (over in 9 of 10 rounds)")
    assert rows["approach-c"]["sentence"] == (
        "approach-c failed its tests: 2 of 5 failed in run r3 (test_quote)")
    assert "without ever reaching pricing@x (run r4)" in rows["approach-d"]["sentence"]
    assert done["sentence"].startswith("approach-a passed every check")


def test_only_all_passed_is_passed_and_a_red_diff_fails() -> None:
    data = report()
    data["rows"] = data["rows"][:2]
    assert conclude(data)["verdict"] == "passed"
    data["rows"][1]["diff"]["red"] = 1
    assert conclude(data)["verdict"] == "failed"
    assert "1 red finding (" in data["rows"][1]["sentence"]
    assert row_verdict({"target": "x", "tests": run_of("interrupted")}) == "error"


def test_a_pass_over_the_ratio_says_it_was_noise() -> None:
    data = report()
    data["rows"] = data["rows"][:2]
    data["rows"][1]["budget"] = budget(sandbox=7.0, baseline=5.0)  # 1.4x, but 2 ms
    done = conclude(data)
    assert done["verdict"] == "passed"
    assert "p95 7.0 ms against the baseline's 5.0 ms, 1.4\u00d7, over 1.3\u00d7 but 2.0 ms " \
        "more, within the noise of 5.0 ms" in done["rows"][1]["sentence"]
    assert cells(done["rows"][1])[8] == "within (noise)"
    data["rows"][1]["budget"] = budget(sandbox=70.0, baseline=50.0)  # 20 ms: the rounds
    data["rows"][1]["budget"]["rounds_over"] = 3
    assert "over in only 3 of 10 rounds: noise" in conclude(data)["rows"][1]["sentence"]


def test_the_table_and_the_markdown_show_the_figures() -> None:
    done = conclude(report())
    row = cells(done["rows"][2])
    assert row == ["approach-b", "passed (r2)", "1000", "0 (0.0%)", "106 ms", "212 ms",
                   "254 ms", "1.8\u00d7", "over: latency", "0 red, 0 yellow", "failed"]
    markdown = render_markdown(done)
    assert "### ❌ laneway experiment `pricing-approaches` (`x1`): failed" in markdown
    assert "| `approach-b` | passed (r2) |" in markdown
    assert "per-slice figures" in markdown
    assert "| round (p95) | baseline |" in markdown
    assert "| 0 | 110 ms |" in markdown
    assert "budget: p95 ≤ 1.3\u00d7 the baseline, errors ≤ 1.0%" in markdown


def test_the_slices_read_one_row_a_round_one_column_a_lane() -> None:
    def part(r: int, lane: str, p95: float, errors: int = 0, requests: int = 12) -> dict[
            str, Any]:
        return {"round": r, "lane": lane, "requests": requests, "errors": errors,
                "p50_ms": p95 / 2, "p95_ms": p95, "p99_ms": p95 * 1.1}
    load = {"budget": {"quantile": "p99"},
            "slices": [part(0, "baseline", 10), part(0, "a", 11), part(0, "b", 130),
                       part(1, "b", 131, errors=2), part(1, "baseline", 9),
                       part(1, "a", 0, requests=0)]}
    assert round_table(load) == (["round (p99)", "baseline", "a", "b"], [
        ["0", "11 ms", "12 ms", "143 ms"], ["1", "9.9 ms", "-", "144 ms, 2 failed"]])
    load["budget"] = {"quantile": "p90"}  # not kept per slice: p95
    assert round_table(load)[0][0] == "round (p95)"


def test_a_running_report_not_updated_for_a_minute_reads_interrupted() -> None:
    running = {"id": "x1", "status": "running", "verdict": "running", "started_at": 0.0,
               "updated_at": 1000.0}
    assert as_read(running, now=1030.0)["verdict"] == "running"
    stale = as_read(running, now=1061.0)
    assert (stale["status"], stale["verdict"]) == ("interrupted", "interrupted")
    assert "not updated for more than 60s" in stale["note"]
    assert running["status"] == "running"  # the stored report is left as it is


def test_the_compact_result_leaves_out_the_slices() -> None:
    small = compact(conclude(report()))
    assert "load" not in small
    assert small["rows"][2]["budget"] == {"outcome": "failed", "failed": ["latency"],
                                          "ratio": pytest.approx(212 / 118)}


def test_too_few_requests_for_the_percentile_is_a_warning_not_an_error() -> None:
    few = read_experiment(GOOD.replace("rate: 50/s", "rate: 1/s"), "experiment.yaml").load
    assert few is not None
    assert few.few_requests() == (
        "rate x duration is 20 requests a lane: a p95 from fewer than 40 is one of the "
        "slowest one or two, so one noisy moment can decide the latency verdict; raise rate "
        "or duration for a sturdier one")
    enough = read_experiment(GOOD, "experiment.yaml").load
    assert enough is not None
    assert enough.few_requests() is None  # 1,000
    done = conclude(report())
    done["load"]["warning"] = few.few_requests()
    assert "> warning: rate x duration is 20 requests a lane" in render_markdown(done)
