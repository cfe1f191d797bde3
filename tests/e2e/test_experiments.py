"""`laneway experiment run` as a user types it, against the chain a -> b -> c with three
approaches to b: one as fast as the baseline, one correct but 120 ms slower (DELAY_MS), one
whose tests fail (it renames the answer's `version`)."""

from __future__ import annotations

import html
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import httpx

from tests.e2e.conftest import LANEWAY, Project
from tests.e2e.test_runs import fork

TEST_FILE = """
import json, os, urllib.request

def test_b_answers_with_its_version():
    # urllib honours HTTP_PROXY: the run's proxy adds the sandbox's key.
    answer = json.loads(urllib.request.urlopen(os.environ["LANEWAY_URL_A"] + "/",
                                               timeout=10).read())
    assert answer["next"]["version"] == "v2"
"""

EXPERIMENT = f"""
name: b-approaches
sandboxes: [fast, slow, broken]
tests: [{sys.executable}, -m, pytest, -q, -p, no:cacheprovider, test_b.py]
load:
  request: GET ${{services.a.url}}/
  rate: 40/s
  duration: 5s
  budget: {{p95: 1.3x, errors: 1%}}
diff: true
"""


# Runs a command with SIGINT's default disposition (an exec keeps it), as from a terminal.
DEFAULT_SIGINT = [sys.executable, "-c", "import os, signal, sys; "
                  "signal.signal(signal.SIGINT, signal.SIG_DFL); "
                  "os.execv(sys.argv[1], sys.argv[1:])"]


def rows_of(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["target"]: row for row in report["rows"]}


def test_three_approaches_pass_fail_latency_fail_tests(project: Project) -> None:
    assert fork(project, "fast", "b", "{VERSION: v2}")["name"] == "fast"
    assert fork(project, "slow", "b", "{VERSION: v2, DELAY_MS: '120'}")["name"] == "slow"
    assert fork(project, "broken", "b", "{VERSION: v2, RENAME: ver}")["name"] == "broken"
    project.write("test_b.py", TEST_FILE)
    project.write("experiment.yaml", EXPERIMENT)
    result = project.run("experiment", "run", "-f", "experiment.yaml", "-o", "json",
                         check=False, timeout=300)
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    rows = rows_of(report)
    base, fast, slow, broken = (rows[n] for n in ("baseline", "fast", "slow", "broken"))
    figures = {n: (r["load"]["p50_ms"], r["load"]["p95_ms"]) for n, r in rows.items()}
    print("p50/p95 ms:", figures, "ratios:", {n: r["load"].get("ratio") for n, r in
                                               rows.items()})
    print(*(r["sentence"] for r in report["rows"]), sep="\n")
    assert report["verdict"] == "failed"
    assert (fast["verdict"], slow["verdict"], broken["verdict"]) == ("passed", "failed",
                                                                     "failed")
    # The fast one: tests passed, within the budget against the baseline of the same run.
    assert fast["tests"]["verdict"] == "passed"
    assert fast["budget"]["outcome"] == "passed", fast["budget"]
    assert fast["diff"]["red"] == 0
    # The slow one: its tests pass, its latency does not, by about the 120 ms it adds.
    assert slow["tests"]["verdict"] == "passed"
    assert slow["budget"]["failed"] == ["latency"]
    assert 90 < slow["load"]["p50_ms"] - base["load"]["p50_ms"] < 200
    assert 90 < slow["budget"]["sandbox_ms"] - slow["budget"]["baseline_ms"] < 250
    assert slow["load"]["ratio"] > 1.3
    assert "failed the latency budget under load: p95" in slow["sentence"]
    assert "with a budget of 1.3\u00d7" in slow["sentence"]
    # The broken one: its tests fail (and its diff shows why: `version` is gone).
    assert broken["tests"]["verdict"] == "failed"
    assert broken["sentence"].startswith("broken failed its tests: 1 of 1 failed in run ")
    assert broken["diff"]["red"] >= 1
    # Every lane was sent the same schedule, and no request of the baseline failed.
    assert {r["load"]["requests"] for r in rows.values()} == {200}
    assert base["load"]["errors"] == 0
    slices = report["load"]["slices"]
    assert len(slices) == 4 * 20  # 5 s in 0.25 s slices, four lanes
    assert [s["lane"] for s in slices[:4]] != [s["lane"] for s in slices[4:8]]  # rotated
    assert {s["requests"] for s in slices} == {10}  # 40/s for a quarter second
    assert report["load"]["overhead"]["send_lag_p50_ms"] is not None
    # Kept by the control plane: listed, and its Markdown for a pull request.
    listed = project.json("experiment", "list")
    assert listed[0]["id"] == report["id"]
    assert listed[0]["verdict"] == "failed"
    markdown = project.run("experiment", "get", report["id"], "-o", "md", check=False).stdout
    assert "| `slow` |" in markdown
    assert "per-slice figures" in markdown
    table = project.run("experiment", "get", report["id"])
    assert "slow failed the latency budget under load" in table.stdout
    # ...and in the web UI: the list, and the experiment's table and sentences.
    link = project.run("ui", "--no-open").stdout.strip().splitlines()[-1]
    base = link.split("/ui/")[0]
    with httpx.Client(timeout=10, follow_redirects=False) as client:
        assert client.get(link).status_code == 303
        listing = client.get(f"{base}/ui/experiments")
        assert listing.status_code == 200
        assert f'href="/ui/experiments/{report["id"]}"' in listing.text
        page = client.get(f"{base}/ui/experiments/{report['id']}")
        assert page.status_code == 200
        assert '<tr data-target="slow">' in page.text
        assert html.escape(slow["sentence"]).replace("&#x27;", "&#39;") in page.text
        # 5 s in 0.25 s slices: 20 rounds of a slice for each of the four lanes.
        assert "Per-slice figures (80 slices, 20 rounds)" in page.text


def test_a_bad_experiment_file_names_the_field(project: Project) -> None:
    project.write("experiment.yaml", EXPERIMENT.replace("40/s", "fast"))
    result = project.run("experiment", "run", "-f", "experiment.yaml", check=False)
    assert result.returncode == 2
    assert "load.rate: 'fast' is not a rate" in result.stderr
    assert "Traceback" not in result.stderr
    project.write("experiment.yaml", EXPERIMENT.replace("${services.a.url}",
                                                        "http://example.com"))
    result = project.run("experiment", "run", "-f", "experiment.yaml", check=False)
    assert result.returncode == 2
    assert "not one of this environment's hosts" in result.stderr
    project.write("experiment.yaml", EXPERIMENT)
    result = project.run("experiment", "run", "-f", "experiment.yaml", check=False)
    assert result.returncode == 2
    assert "no sandbox 'fast'" in result.stderr


async def test_an_agent_runs_an_experiment_over_mcp(project: Project) -> None:
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    from tests.e2e.test_mcp import call

    fork(project, "fast", "b", "{VERSION: v2}")
    fork(project, "slow", "b", "{VERSION: v2, DELAY_MS: '120'}")
    experiment = {"name": "over-mcp", "sandboxes": ["fast", "slow"],
                  "load": {"request": "GET ${services.a.url}/", "rate": "20/s",
                           "duration": "3s", "budget": {"p95": "3x", "errors": "1%"}}}
    # This test is about the MCP tools, not the budget's statistics (the tests above hold
    # those, with 1.3x and longer loads): 60 requests a lane under a loaded CI once put the
    # fast sandbox's p95 over 1.3x, while 120 ms slower is over 3x by far.
    # Tools block for 3 s at most here: the experiment (~10 s) comes back as a handle first.
    params = StdioServerParameters(command=LANEWAY, args=["mcp"], cwd=str(project.root),
                                   env={**os.environ, "LANEWAY_MCP_WAIT_S": "3"})
    async with Client(params) as client:
        tools = {tool.name for tool in (await client.list_tools()).tools}
        assert {"run_experiment", "get_experiment"} <= tools
        error, message = await call(client, "run_experiment", experiment={
            **experiment, "load": {**experiment["load"], "rate": "lots"}})
        assert error
        assert "load.rate: 'lots' is not a rate" in message
        error, handle = await call(client, "run_experiment", experiment=experiment)
        assert not error, handle
        assert handle["status"] == "running"
        assert handle["next"] == f"get_experiment(experiment_id={handle['id']!r})"
        result = handle
        while result["status"] == "running":
            error, result = await call(client, "get_experiment", experiment_id=handle["id"],
                                       wait_s=3)
            assert not error, result
        assert result["verdict"] == "failed"
        verdicts = {r["target"]: r["verdict"] for r in result["rows"]}
        assert verdicts == {"baseline": "reference", "fast": "passed", "slow": "failed"}
        assert "load" not in result  # compact: no per-slice figures
        error, again = await call(client, "get_experiment", experiment_id=result["id"])
        assert not error
        assert again["rows"] == result["rows"]


def test_ctrl_c_ends_the_experiment_interrupted(project: Project) -> None:
    fork(project, "fast", "b", "{VERSION: v2}")
    project.write("experiment.yaml", """
name: stopped
sandboxes: [fast]
load:
  request: GET ${services.a.url}/
  rate: 10/s
  duration: 60s
""")
    # As from a terminal. Started in the background by a shell without job control (as CI
    # may be: `(nohup make test &)`), every process of the suite inherits SIGINT ignored, and
    # a Python started that way keeps ignoring it (as it should: a background job is not
    # Ctrl-C'd), so the child gets SIGINT's default back before it starts.
    proc = subprocess.Popen([*DEFAULT_SIGINT, LANEWAY, "experiment", "run", "-f",
                             "experiment.yaml"], cwd=project.root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        found: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            found = project.api("/v1/experiments")
            if found and found[0].get("phase") == "load":
                break
            time.sleep(0.2)
        assert found, "the experiment never started"
        # Its progress reaches the control plane while it runs (every 10 s)...
        while time.monotonic() < deadline and "slice" not in str(found[0].get("progress")):
            time.sleep(0.5)
            found = project.api("/v1/experiments")
        proc.send_signal(signal.SIGINT)
        try:
            _, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            # Seen once in CI, not reproduced since: say whether a second Ctrl-C (which raises
            # at once, wherever the first one's cancellation went) ends it.
            proc.send_signal(signal.SIGINT)
            try:
                _, late = proc.communicate(timeout=15)
                outcome = f"a second Ctrl-C ended it (exit {proc.returncode})"
            except subprocess.TimeoutExpired:
                outcome, late = "a second Ctrl-C did not end it either", ""
            raise AssertionError(f"Ctrl-C did not end the experiment in 30 s; {outcome}:\n"
                                 f"{late[-3000:]}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    report = project.api(f"/v1/experiments/{found[0]['id']}")
    assert (report["status"], report["verdict"]) == ("interrupted", "interrupted")
    assert "Ctrl-C" in report["note"]


def test_a_route_group_is_an_approach_too(project: Project) -> None:
    project.write("one.yaml", "name: one\nlabels: {feature: f}\nforks:\n  - service: b\n"
                  "    env: {VERSION: v2}\n")
    project.write("two.yaml", "name: two\nlabels: {feature: f}\nforks:\n  - service: c\n"
                  "    env: {VERSION: v2, DELAY_MS: '120'}\n")
    for name in ("one", "two"):
        project.run("sandbox", "apply", "-f", f"{name}.yaml", "--wait")
    project.write("g.yaml", "name: feature\nmatch:\n  labels: {feature: f}\n")
    project.run("routegroup", "apply", "-f", "g.yaml")
    project.write("experiment.yaml", f"""
name: grouped
sandboxes: [one]
routegroups: [feature]
tests: [{sys.executable}, -m, pytest, -q, -p, no:cacheprovider, test_b.py]
load:
  request: GET ${{services.a.url}}/
  rate: 20/s
  duration: 6s
""")  # 6 s: with 3 s (60 requests a lane) a loaded CI once put `one`'s p95 over its budget
    project.write("test_b.py", TEST_FILE)
    result = project.run("experiment", "run", "-f", "experiment.yaml", "-o", "json",
                         check=False, timeout=300)
    report = json.loads(result.stdout)
    rows = rows_of(report)
    assert rows["feature"]["kind"] == "routegroup"
    # The group's key reaches both forks: b's version, and c's 120 ms.
    assert rows["feature"]["tests"]["verdict"] == "passed"
    assert rows["feature"]["budget"]["failed"] == ["latency"], (rows["feature"]["budget"],
                                                                rows["baseline"]["load"])
    assert rows["one"]["verdict"] == "passed"
    assert result.returncode == 1


def test_too_few_requests_for_a_p95_is_said_and_the_experiment_still_runs(
        project: Project) -> None:
    fork(project, "fast", "b", "{VERSION: v2}")
    project.write("experiment.yaml", """
name: quick-look
sandboxes: [fast]
load:
  request: GET ${services.a.url}/
  rate: 10/s
  duration: 2s
""")
    result = project.run("experiment", "run", "-f", "experiment.yaml", check=False,
                         timeout=120)
    said = "rate x duration is 20 requests a lane: a p95 from fewer than 40"
    assert said in result.stderr  # while it runs
    assert f"warning: {said}" in " ".join(result.stdout.split())  # and with the table
    assert result.returncode in (0, 1), result.stderr  # a verdict all the same
    listed = project.api("/v1/experiments")[0]
    report = project.api(f"/v1/experiments/{listed['id']}")
    assert said in report["load"]["warning"]
    assert {r["load"]["requests"] for r in rows_of(report).values()} == {20}
