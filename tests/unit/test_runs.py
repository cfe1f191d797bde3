"""Run reports as pure functions: leaks by time containment, forks reached, verdict, JUnit."""

from __future__ import annotations

from laneway.core.hops import Hop
from laneway.core.runs import (
    find_leaks,
    forks_reached,
    is_error_line,
    key_conflicts,
    leak_sentence,
    parse_junit,
    render_markdown,
    verdict_of,
)

K = "key000000001"


def hop(service: str, start: float, ms: float, key: str = K, trace: str = "t1",
        destination: str = "baseline", status: int = 200) -> Hop:
    return Hop(1000 + start, trace, "", service, key, destination, "", status, ms, "GET",
               f"/{service}")


def test_the_service_whose_call_lost_the_key_is_named() -> None:
    hops = [
        hop("web", 0.000, 50),
        hop("orders", 0.005, 40),
        hop("pricing", 0.010, 20, key=""),  # orders called pricing without the key
        hop("currency", 0.015, 5, key=""),  # pricing never had it: not a second leak
    ]
    leaks = find_leaks(hops, {K})
    assert [(leak.service, leak.lost_at) for leak in leaks] == [("orders", "pricing")]
    assert leaks[0].trace_id == "t1"


def test_sibling_calls_are_told_apart_by_time() -> None:
    hops = [
        hop("web", 0.000, 100),
        hop("orders", 0.010, 20),  # web -> orders (keeps the key)
        hop("pricing", 0.015, 5),  # orders -> pricing (keeps the key)
        hop("users", 0.050, 10, key=""),  # web -> users (drops it)
    ]
    leaks = find_leaks(hops, {K})
    assert [(leak.service, leak.lost_at) for leak in leaks] == [("web", "users")]


def test_no_leak_without_the_key_or_when_the_trace_starts_keyless() -> None:
    assert find_leaks([hop("web", 0, 10, key=""), hop("orders", 0.001, 5, key="")], {K}) == []
    other = [hop("web", 0, 10, key="otherkey0000"), hop("orders", 0.001, 5, key="")]
    assert find_leaks(other, {K}) == []
    fine = [hop("web", 0, 10), hop("orders", 0.001, 5)]
    assert find_leaks(fine, {K}) == []


def test_forks_reached_counts_only_served_requests() -> None:
    hops = [hop("pricing", 0, 1, destination="sb"), hop("pricing", 1, 1, destination="sb"),
            hop("pricing", 2, 1, destination="sb", status=503), hop("web", 3, 1),
            hop("pricing", 4, 1, key="other0000000", destination="sb2")]
    assert forks_reached(hops, {K}, ["pricing@sb", "web@sb"]) == {"pricing@sb": 2, "web@sb": 0}


def test_verdicts() -> None:
    assert verdict_of(0, {"a@s": 1}, allow_unreached=False) == "passed"
    assert verdict_of(0, {"a@s": 0}, allow_unreached=False) == "vacuous"
    assert verdict_of(0, {"a@s": 0}, allow_unreached=True) == "passed"
    assert verdict_of(1, {"a@s": 5}, allow_unreached=False) == "failed"
    assert verdict_of(None, {}, allow_unreached=False) == "failed"


def test_junit_failures_and_totals() -> None:
    xml = """<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="3">
      <testcase classname="tests.test_x" name="test_ok"/>
      <testcase classname="tests.test_x" name="test_price"><failure message="assert 500 == 200">
      trace</failure></testcase>
      <testcase classname="tests.test_x" name="test_skip"><skipped/></testcase>
    </testsuite></testsuites>"""
    totals, failures = parse_junit(xml)
    assert totals == {"tests": 3, "failures": 1, "errors": 0, "skipped": 1}
    assert failures == [{"name": "tests.test_x::test_price", "message": "assert 500 == 200"}]


def test_error_lines() -> None:
    assert is_error_line("2026 pricing ERROR boom")
    assert is_error_line("Traceback (most recent call last):")
    assert is_error_line("level=warning msg=slow")
    assert not is_error_line("GET /price 200")


def test_markdown_report_names_everything_a_reviewer_needs() -> None:
    report = {"id": "r1", "sandbox": "sb", "routegroup": None, "routing_key": K,
              "verdict": "failed", "command_line": "pytest -x", "exit_code": 1,
              "duration_s": 1.5, "hops": 4, "forks_reached": {"pricing@sb": 2},
              "failures": [{"name": "t::x", "message": "boom"}],
              "leaks": [{"service": "orders", "lost_at": "pricing", "path": "/p",
                         "trace_id": "t1"}],
              "fork_errors": ["[pricing@sb] ERROR boom"], "output_tail": ["1 failed"],
              "note": ""}
    text = render_markdown(report)
    for fragment in ("❌", "`pytest -x`", "`pricing@sb` | 2", "`t::x`: boom",
                     "`orders` called `pricing`", "ERROR boom"):
        assert fragment in text


def test_hops_with_conflicting_keys_are_counted_and_reported() -> None:
    hops = [Hop(1.0, "t1", "", "web", K, "sb", "web@sb#1", 200, 1.0, "GET", "/",
                key_conflict=True),
            Hop(1.1, "t1", "", "currency", K, "baseline", "", 200, 1.0, "GET", "/c")]
    assert key_conflicts(hops) == 1
    report = {"id": "r1", "sandbox": "sb", "routegroup": None, "routing_key": K,
              "verdict": "passed", "command_line": "pytest", "exit_code": 0, "duration_s": 1.0,
              "hops": 2, "forks_reached": {"web@sb": 1}, "failures": [], "leaks": [],
              "fork_errors": [], "output_tail": [], "note": "", "key_conflicts": 1}
    assert ("> 1 hop carried two different laneway-key members; the router used the last one, "
            "as OpenTelemetry does.") in render_markdown(report)
    del report["key_conflicts"]  # a report saved before the field existed
    assert "laneway-key" not in render_markdown(report)


def called_by(h: Hop, caller: str) -> Hop:
    h.caller = caller
    return h


def test_a_fork_calling_without_its_key_is_a_certain_leak_even_without_a_trace() -> None:
    hops = [
        hop("web", 0.000, 50, trace=""),
        hop("orders", 0.005, 40, trace="", destination="sb"),  # the fork, keyed
        called_by(hop("pricing", 0.010, 20, key="", trace=""), "orders@sb"),
        called_by(hop("pricing", 0.012, 5, key="", trace=""), "orders@other"),  # not ours
        called_by(hop("pricing", 0.014, 5, key="", trace=""), "external"),
    ]
    leaks = find_leaks(hops, {K})
    assert [(leak.service, leak.process, leak.lost_at, leak.certainty, leak.found_by)
            for leak in leaks] == [("orders", "orders@sb", "pricing", "certain", "caller")]
    assert leaks[0].serving == "GET /orders"


def test_a_baseline_process_serving_a_keyed_request_is_a_probable_leak() -> None:
    hops = [
        hop("web", 0.000, 50, trace=""),
        called_by(hop("orders", 0.010, 10, key="", trace=""), "web"),  # during web's request
        called_by(hop("orders", 0.200, 10, key="", trace=""), "web"),  # later: web was idle
    ]
    leaks = find_leaks(hops, {K})
    assert [(leak.service, leak.certainty, leak.path) for leak in leaks] == [
        ("web", "probable", "/orders")]
    sentence = leak_sentence(leaks[0].to_json())
    assert sentence == ("web probably called orders (/orders) without the key, while serving "
                        "GET /web (no trace: found by the calling process)")


def test_a_leak_found_by_trace_and_by_caller_is_reported_once() -> None:
    hops = [
        hop("web", 0.000, 50),
        hop("orders", 0.005, 40, destination="sb"),
        called_by(hop("pricing", 0.010, 20, key=""), "orders@sb"),
    ]
    leaks = find_leaks(hops, {K})
    assert [(leak.service, leak.process, leak.found_by) for leak in leaks] == [
        ("orders", "orders@sb", "trace")]
    assert "`orders@sb` (fork of orders) called `pricing`" in leak_sentence(
        leaks[0].to_json(), "`")
