"""How the CLI and the MCP server present a run that its daemon interrupted (no verdict)."""

from __future__ import annotations

from typing import Any

import pytest

from laneway.cli.commands_runs import EXIT_INTERRUPTED, _exit_code, print_report
from laneway.mcp.server import _compact_report

REPORT: dict[str, Any] = {
    "id": "r0123abcd", "sandbox": "sb", "routegroup": None, "routing_key": "abcdef012345",
    "command": "pytest", "command_line": "pytest", "status": "interrupted",
    "verdict": "interrupted", "exit_code": None, "timed_out": False, "duration_s": 4.2,
    "started_at": 1.0, "finished_at": 9.0, "forks_reached": {"web@sb": 2}, "hops": 2,
    "fork_responses": {"web@sb": {"2xx": 2}}, "leaks": [], "fork_errors": [], "failures": [],
    "tests": None, "output_tail": ["started"], "note": "the daemon stopped while this run was "
    "running (it crashed or was killed), so the run has no verdict",
}


def test_laneway_run_exits_4_for_an_interrupted_run() -> None:
    assert EXIT_INTERRUPTED == 4
    assert _exit_code(REPORT) == 4
    # An interrupted run that had a (signal) exit code is still not the command's failure.
    assert _exit_code({**REPORT, "exit_code": -15}) == 4


def test_the_report_of_an_interrupted_run_reads_as_one(capsys: pytest.CaptureFixture[str]) -> None:
    print_report(REPORT, "table")
    out = capsys.readouterr().out
    assert "run r0123abcd: interrupted  exit -  4.2s" in out
    assert "forks reached: web@sb: 2" in out
    assert "note: the daemon stopped while this run was running" in out


def test_the_mcp_result_says_what_to_do_next() -> None:
    result = _compact_report(REPORT)
    assert (result["status"], result["verdict"], result["hops"]) == ("interrupted",
                                                                      "interrupted", 2)
    assert "run_tests again" in result["next"]


def test_a_report_with_conflicting_keys_says_so_on_every_client(
        capsys: pytest.CaptureFixture[str]) -> None:
    report = {**REPORT, "status": "finished", "verdict": "passed", "exit_code": 0, "note": "",
              "key_conflicts": 3}
    print_report(report, "table")
    assert ("note: 3 hops carried two different laneway-key members; the router used the last "
            "one, as OpenTelemetry does.") in capsys.readouterr().out
    result = _compact_report(report)
    assert result["key_conflicts"] == 3
    assert result["note"].startswith("3 hops carried two different laneway-key members")
