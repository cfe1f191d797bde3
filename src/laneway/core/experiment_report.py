"""What an experiment's report says, from plain data: each row's verdict and its one plain
sentence, the table's cells, the Markdown for a pull request, and whether a stored report was
abandoned (`interrupted`).

The client that runs an experiment (`client/experiments.py`) fills the rows' facts (tests,
load figures, budget outcome, diff); the CLI, the API's Markdown, the UI and the MCP server all
read them through this module, so they say the same thing.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

__all__ = [
    "STALE_AFTER_S",
    "ExperimentVerdict",
    "as_read",
    "cells",
    "compact",
    "conclude",
    "render_markdown",
    "round_table",
    "row_sentence",
    "row_verdict",
]

TIMES = "\u00d7"  # the multiplication sign of `1.8x` as the issue writes it
STALE_AFTER_S = 60.0  # a running report not updated for this long was abandoned
ExperimentVerdict = Literal["passed", "failed", "error", "running", "interrupted"]
_HEADERS = ("target", "tests", "requests", "errors", "p50", "p95", "p99", "ratio", "budget",
            "diff", "verdict")


def _ms(value: Any) -> str:
    if value is None:
        return "-"
    # 9.98 would read "10.0 ms" beside a "10 ms": whole milliseconds from 9.95 on.
    return f"{value:.0f} ms" if value >= 9.95 else f"{value:.1f} ms"


def _x(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}".rstrip("0").rstrip(".") + TIMES


def row_verdict(row: Mapping[str, Any]) -> ExperimentVerdict:
    """`passed` only when every check the experiment asked for passed on this sandbox."""
    tests, budget, diff = row.get("tests"), row.get("budget"), row.get("diff")
    if tests is not None and tests.get("verdict") in ("error", "interrupted"):
        return "error"
    if row.get("load_error"):
        return "error"
    failed = (tests is not None and tests.get("verdict") != "passed") or \
        (budget is not None and budget.get("outcome") != "passed") or \
        (diff is not None and int(diff.get("red") or 0) > 0)
    return "failed" if failed else "passed"


def _tests_reason(tests: Mapping[str, Any]) -> str:
    run = f"run {tests['run_id']}"
    verdict = tests.get("verdict")
    if verdict == "vacuous":
        unreached = ", ".join(tests.get("unreached") or []) or "its forks"
        return (f"its tests vacuously: they passed without ever reaching {unreached} "
                f"({run}), so they prove nothing about the change")
    if verdict in ("error", "interrupted"):
        return f"to finish its tests: the run ended `{verdict}` ({run}): {tests.get('note', '')}"
    totals = tests.get("totals") or {}
    names = [f["name"].rpartition("::")[2] for f in tests.get("failures") or []][:3]
    count = (totals.get("failures", 0) + totals.get("errors", 0)) if totals else len(names)
    if totals and count:
        what = f"{count} of {totals.get('tests', count)} failed"
    else:
        what = f"the command exited {tests.get('exit_code')}"
    return f"its tests: {what} in {run}" + (f" ({', '.join(names)})" if names else "")


def _latency_reason(budget: Mapping[str, Any]) -> str:
    q = budget["quantile"]
    return (f"the latency budget under load: {q} {_ms(budget['sandbox_ms'])} against the "
            f"baseline's {_ms(budget['baseline_ms'])}, {_x(budget['ratio'])} with a budget of "
            f"{_x(budget['budget_ratio'])} (over in {budget['rounds_over']} of "
            f"{budget['rounds']} rounds)")


def _errors_reason(budget: Mapping[str, Any], load: Mapping[str, Any]) -> str:
    return (f"the error budget under load: {budget['error_rate']:.1%} of "
            f"{load['requests']} requests failed, with a budget of "
            f"{budget['budget_errors']:.1%}")


def row_sentence(row: Mapping[str, Any]) -> str:
    """One plain sentence: what happened to this row's sandbox (or the baseline)."""
    name = row["target"]
    load = row.get("load")
    if row.get("kind") == "baseline":
        if not load:
            return "the baseline: no load step"
        return (f"the baseline (the reference, measured in the same slices): p50 "
                f"{_ms(load['p50_ms'])}, p95 {_ms(load['p95_ms'])}, p99 {_ms(load['p99_ms'])} "
                f"over {load['requests']} requests, {load['errors']} errors")
    if row.get("load_error"):
        return f"{name} has no verdict: the load step failed: {row['load_error']}"
    tests, budget, diff = row.get("tests"), row.get("budget"), row.get("diff")
    reasons: list[str] = []
    if tests is not None and tests.get("verdict") != "passed":
        reasons.append(_tests_reason(tests))
    if budget is not None and "latency" in budget.get("failed", []):
        reasons.append(_latency_reason(budget))
    if budget is not None and "errors" in budget.get("failed", []) and load:
        reasons.append(_errors_reason(budget, load))
    if diff is not None and int(diff.get("red") or 0) > 0:
        red = int(diff["red"])
        reasons.append(f"the diff against the baseline: {red} red finding"
                       f"{'s' if red != 1 else ''} ({diff.get('summary', '')})")
    if reasons:
        verb = "could not" if row_verdict(row) == "error" else "failed"
        return f"{name} {verb} " + "; and ".join(reasons)
    shown = []
    if tests is not None:
        shown.append(f"tests passed in run {tests['run_id']}")
    if budget is not None:
        shown.append(_within(budget))
    if diff is not None:
        shown.append(f"the diff found nothing red ({diff.get('yellow', 0)} yellow)")
    return f"{name} passed every check" + (f": {'; '.join(shown)}" if shown else "")


def _noise_excuse(budget: Mapping[str, Any]) -> str:
    """Why a ratio over the budget still passed (the budget rule, `core.loadmath`), or ""."""
    ratio, limit = budget.get("ratio"), budget.get("budget_ratio")
    if ratio is None or limit is None or ratio <= limit:
        return ""
    sandbox, baseline = budget.get("sandbox_ms"), budget.get("baseline_ms")
    if sandbox is not None and baseline is not None and sandbox - baseline <= budget["noise_ms"]:
        return (f"{sandbox - baseline:.1f} ms more, within the noise of "
                f"{budget['noise_ms']:.1f} ms")
    return f"over in only {budget['rounds_over']} of {budget['rounds']} rounds: noise"


def _within(budget: Mapping[str, Any]) -> str:
    figure = f"{budget['quantile']} {_ms(budget['sandbox_ms'])}"
    if not budget.get("budget_ratio"):
        return figure
    figure += f" against the baseline's {_ms(budget['baseline_ms'])}, {_x(budget['ratio'])}"
    excuse = _noise_excuse(budget)
    if excuse:
        return f"{figure}, over {_x(budget['budget_ratio'])} but {excuse}"
    return f"{figure} within {_x(budget['budget_ratio'])}"


def conclude(report: dict[str, Any]) -> dict[str, Any]:
    """Each row's verdict and sentence, and the experiment's: `passed` when every sandbox
    passed."""
    verdicts = []
    for row in report["rows"]:
        row["sentence"] = row_sentence(row)
        if row.get("kind") != "baseline":
            row["verdict"] = row_verdict(row)
            verdicts.append(row["verdict"])
        else:
            row["verdict"] = "reference"
    report["verdict"] = "error" if "error" in verdicts else \
        "passed" if verdicts and all(v == "passed" for v in verdicts) else "failed"
    report["sentence"] = "; ".join(r["sentence"] for r in report["rows"]
                                   if r.get("kind") != "baseline") + "."
    return report


def cells(row: Mapping[str, Any]) -> list[str]:
    """The row as the table shows it (`_HEADERS`' order)."""
    tests, load, budget, diff = (row.get(k) for k in ("tests", "load", "budget", "diff"))
    test_cell = "-" if tests is None else f"{tests['verdict']} ({tests['run_id']})"
    if load:
        figures = [str(load["requests"]), f"{load['errors']} ({load['error_rate']:.1%})",
                   _ms(load["p50_ms"]), _ms(load["p95_ms"]), _ms(load["p99_ms"]),
                   _x(load.get("ratio")) if row.get("kind") != "baseline" else f"1{TIMES}"]
    else:
        figures = ["-"] * 6
    if budget is None:
        budget_cell = "-"
    elif budget["outcome"] == "passed":
        budget_cell = "within (noise)" if _noise_excuse(budget) else "within"
    else:
        budget_cell = "over: " + ", ".join(budget["failed"])
    diff_cell = "-" if diff is None else f"{diff.get('red', 0)} red, {diff.get('yellow', 0)} " \
        "yellow"
    return [row["target"], test_cell, *figures, budget_cell, diff_cell,
            str(row.get("verdict", "running"))]


def as_read(report: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """The report as a reader should see it: one still `running` but not updated for
    `STALE_AFTER_S` was abandoned (its client was killed), so it reads `interrupted`."""
    now = time.time() if now is None else now
    if report.get("status") == "running" and \
            now - float(report.get("updated_at") or report.get("started_at") or 0) \
            > STALE_AFTER_S:
        report = {**report, "status": "interrupted", "verdict": "interrupted",
                  "note": (f"not updated for more than {STALE_AFTER_S:.0f}s: the client that "
                           "ran it stopped (killed, or its machine slept); the report keeps "
                           "what it had. Run it again.")}
    return report


def compact(report: Mapping[str, Any]) -> dict[str, Any]:
    """The result an agent needs (MCP): verdicts, figures, sentences; no per-slice data."""
    rows = []
    for row in report.get("rows", []):
        item: dict[str, Any] = {"target": row["target"], "verdict": row.get("verdict")}
        if row.get("tests"):
            item["tests"] = {k: row["tests"].get(k) for k in ("verdict", "run_id", "exit_code")}
        if row.get("load"):
            item["load"] = row["load"]
        if row.get("budget"):
            item["budget"] = {k: row["budget"].get(k) for k in ("outcome", "failed", "ratio")}
        if row.get("diff"):
            item["diff"] = {k: row["diff"].get(k) for k in ("red", "yellow")}
        item["sentence"] = row.get("sentence", "")
        rows.append(item)
    return {"id": report["id"], "name": report.get("name"), "status": report.get("status"),
            "verdict": report.get("verdict"), "progress": report.get("progress"),
            "sentence": report.get("sentence", ""), "rows": rows,
            **({"note": report["note"]} if report.get("note") else {})}


def round_table(load: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The per-slice figures one row a round, one column a lane (the lanes' slices of a round
    were measured a moment apart, so a row reads across): each slice's percentile of the
    budget (p50, p95 or p99; else p95), and its errors when it had any."""
    budget = load.get("budget") or {}
    key = f"{budget.get('quantile')}_ms"
    slices = load.get("slices") or []
    if slices and key not in slices[0]:
        key = "p95_ms"
    lanes = list(dict.fromkeys(str(s["lane"]) for s in slices))
    by_round: dict[int, dict[str, Mapping[str, Any]]] = {}
    for part in slices:
        by_round.setdefault(int(part["round"]), {})[str(part["lane"])] = part

    def cell(part: Mapping[str, Any] | None) -> str:
        if part is None or not part.get("requests"):
            return "-"
        errors = f", {part['errors']} failed" if part.get("errors") else ""
        return f"{_ms(part.get(key))}{errors}"
    return ([f"round ({key.removesuffix('_ms')})", *lanes],
            [[str(r), *(cell(by_round[r].get(lane)) for lane in lanes)]
             for r in sorted(by_round)])


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers),
            *("| " + " | ".join(r) + " |" for r in rows)]


def render_markdown(report: Mapping[str, Any]) -> str:
    """The report as one pastes it into a pull request."""
    icon = {"passed": "✅", "failed": "❌", "running": "⏳", "interrupted": "⏹️"}.get(
        str(report.get("verdict")), "❓")
    lines = [f"### {icon} laneway experiment `{report.get('name')}` (`{report['id']}`): "
             f"{report.get('verdict')}", ""]
    load = report.get("load")
    if load:
        budget = load.get("budget") or {}
        limits = [f"{budget.get('quantile')} ≤ {_x(budget.get('ratio'))} the baseline"
                  if budget.get("ratio") else "",
                  f"errors ≤ {budget['errors']:.1%}" if budget.get("errors") is not None
                  else ""]
        lines += [f"Load: `{load['request']}` at {load['rate']:g}/s per lane for "
                  f"{load['duration_s']:g}s, in {load['slice_s']:g}s slices interleaved with "
                  f"the baseline ({load['rounds']} rounds); budget: "
                  f"{', '.join(x for x in limits if x) or 'none'}.", ""]
        if load.get("warning"):
            lines += [f"> warning: {load['warning']}", ""]
    lines += _md_table([h.upper() if h == "p50" else h for h in _HEADERS],
                       [[f"`{c[0]}`", *c[1:]] for c in (cells(r) for r in report["rows"])])
    lines.append("")
    lines += [f"- {row.get('sentence', '')}" for row in report["rows"]]
    if report.get("note"):
        lines += ["", f"> {report['note']}"]
    if load and load.get("overhead"):
        over = load["overhead"]
        lines += ["", f"Generator overhead: sent {over.get('send_lag_p50_ms')} ms late at the "
                  f"median, {over.get('send_lag_p99_ms')} ms at p99; against a trivial local "
                  f"server p50 {over.get('trivial_server_p50_ms')} ms, p99 "
                  f"{over.get('trivial_server_p99_ms')} ms; "
                  f"{over.get('connections_opened')} connections opened."]
    if load and load.get("slices"):
        headers, rows = round_table(load)
        lines += ["", f"<details><summary>per-slice figures: {headers[0]}, each lane's slice "
                  "of every round</summary>", ""]
        lines += _md_table(headers, rows)
        lines += ["", "</details>"]
    return "\n".join(lines) + "\n"
