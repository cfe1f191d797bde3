"""`laneway run` and friends as a user types them, against the chain a -> b -> c."""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests.e2e.conftest import Project

# A test client that cannot set headers: urllib honours HTTP_PROXY, so the key is injected.
CALL_A = (f"{sys.executable} -c \"import os, urllib.request; "
          "print(urllib.request.urlopen(os.environ['LANEWAY_URL_A'] + '{path}').read())\"")
# A client that bypasses the proxy and sets no header: it never reaches a fork.
CALL_A_DIRECT = (f"{sys.executable} -c \"import os, urllib.request; "
                 "o = urllib.request.build_opener(urllib.request.ProxyHandler({})); "
                 "print(o.open(os.environ['LANEWAY_URL_A']).read())\"")


def fork(project: Project, name: str, service: str, env: str = "{}") -> dict[str, Any]:
    project.write(f"{name}.yaml", f"name: {name}\nforks:\n  - service: {service}\n"
                                  f"    env: {env}\n")
    result = project.run("sandbox", "apply", "-f", f"{name}.yaml", "--wait", "-o", "json",
                         check=False)
    view: dict[str, Any] = json.loads(result.stdout) if result.stdout.strip() else {}
    return view


def run(project: Project, *args: str) -> tuple[int, dict[str, Any]]:
    result = project.run("run", "-o", "json", *args, check=False)
    return result.returncode, json.loads(result.stdout)


def test_a_run_that_reaches_its_fork_passes(project: Project) -> None:
    fork(project, "sb", "b", "{VERSION: v2}")
    code, report = run(project, "--sandbox", "sb", "--", "sh", "-c", CALL_A.format(path="/"))
    assert code == 0, report
    assert report["verdict"] == "passed"
    assert report["forks_reached"]["b@sb"] >= 1
    assert report["leaks"] == []
    assert any("v2" in line for line in report["output_tail"])
    listed = project.json("runs", "list")
    assert listed[0]["id"] == report["id"]
    markdown = project.run("runs", "get", report["id"], "-o", "md").stdout
    assert "passed" in markdown
    assert "`b@sb`" in markdown


def test_a_passing_command_that_never_reaches_the_fork_is_vacuous(project: Project) -> None:
    fork(project, "sb", "b")
    code, report = run(project, "--sandbox", "sb", "--", "sh", "-c", CALL_A_DIRECT)
    assert report["exit_code"] == 0
    assert report["verdict"] == "vacuous"
    assert code == 3
    assert "never reached b@sb" in report["note"]
    code, allowed = run(project, "--sandbox", "sb", "--allow-unreached", "--", "sh", "-c",
                        CALL_A_DIRECT)
    assert (code, allowed["verdict"]) == (0, "passed")


def test_a_failing_run_reports_tests_and_the_forks_error_lines(project: Project) -> None:
    fork(project, "buggy", "c", "{FAIL_REQUESTS: '1'}")
    project.write("test_chain.py", """
import os, urllib.request, urllib.error

def test_chain_answers():
    try:
        body = urllib.request.urlopen(os.environ["LANEWAY_URL_A"]).read().decode()
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"a answered {exc.code}") from exc
    assert "error" not in body, body
""")
    code, report = run(project, "--sandbox", "buggy", "--", sys.executable, "-m", "pytest",
                       "-q", "-p", "no:cacheprovider", "test_chain.py")
    assert code == 1
    assert report["verdict"] == "failed"
    assert report["tests"]["failures"] == 1
    assert report["failures"][0]["name"].endswith("test_chain_answers")
    assert any("ERROR c" in line and "division by zero" in line
               for line in report["fork_errors"]), report["fork_errors"]
    assert report["forks_reached"]["c@buggy"] >= 1


def test_a_service_that_drops_baggage_is_named(project: Project) -> None:
    fork(project, "sb", "c")
    code, report = run(project, "--sandbox", "sb", "--allow-unreached", "--", "sh", "-c",
                       CALL_A.format(path="/drop"))
    assert code == 0
    assert [(leak["service"], leak["lost_at"]) for leak in report["leaks"]] == [("a", "b")]
    leaks = project.json("leaks", "--sandbox", "sb")
    assert {leak["service"] for leak in leaks} == {"a"}


def test_a_service_that_loses_its_whole_context_is_named_by_its_process(
        project: Project) -> None:
    # a drops traceparent and baggage together on /lose: no trace joins the hops, only the
    # router's view of who called says where the key fell off.
    fork(project, "sb", "c")
    code, report = run(project, "--sandbox", "sb", "--", "sh", "-c", CALL_A.format(path="/lose"))
    assert (code, report["verdict"]) == (3, "vacuous")
    assert [(leak["service"], leak["process"], leak["lost_at"], leak["certainty"],
             leak["found_by"]) for leak in report["leaks"]] == [
        ("a", "a", "b", "probable", "caller")]
    assert report["leaks"][0]["serving"].startswith("GET /lose")
    assert "the key was lost on the way: a probably called b" in report["note"]
    assert "did not carry the routing key" not in report["note"]
    leaks = project.json("leaks", "--sandbox", "sb")
    assert {(leak["service"], leak["certainty"]) for leak in leaks} == {("a", "probable")}


def test_a_fork_that_loses_the_context_is_a_certain_leak(project: Project) -> None:
    fork(project, "sb", "b", "{LOSE_CONTEXT: '1'}")
    code, report = run(project, "--sandbox", "sb", "--", "sh", "-c", CALL_A.format(path="/"))
    assert (code, report["verdict"]) == (0, "passed")  # the fork was reached; it leaked after
    assert [(leak["service"], leak["process"], leak["lost_at"], leak["certainty"])
            for leak in report["leaks"]] == [("b", "b@sb", "c", "certain")]
    table = project.run("leaks", "--sandbox", "sb").stdout
    assert "b@sb" in table


def test_run_diff_names_a_renamed_field_red_and_a_changed_value_yellow(
        project: Project) -> None:
    fork(project, "renamed", "b", "{RENAME: ver}")
    code, report = run(project, "--sandbox", "renamed", "--diff", "--", "sh", "-c",
                       CALL_A.format(path="/"))
    assert (code, report["verdict"]) == (0, "passed")
    loud = [(f["risk"], f["endpoint"], f["path"], f["kind"]) for f in report["diff"]["findings"]]
    assert loud == [("red", "GET /", "$.next.version", "missing")]
    assert report["diff"]["red"] == 1
    assert report["diff"]["findings"][0]["example"]["url"].endswith("/")
    markdown = project.run("runs", "get", report["id"], "-o", "md").stdout
    assert "Diff against the baseline" in markdown
    assert "`$.next.version`" in markdown

    fork(project, "valued", "b", "{VERSION: v2}")
    code, report = run(project, "--sandbox", "valued", "--diff", "--", "sh", "-c",
                       CALL_A.format(path="/"))
    assert [(f["risk"], f["path"], f["baseline"], f["sandbox"])
            for f in report["diff"]["findings"]] == [
        ("yellow", "$.next.version", "baseline", "v2")]
    assert report["diff"]["summary"] == (
        "1 request to 1 endpoint replayed: 0 red and 1 yellow findings on 1 endpoint")


def test_request_prints_answer_and_path(project: Project) -> None:
    fork(project, "sb", "b", "{VERSION: v9}")
    result = project.json("request", "--sandbox", "sb", "GET", project.url("a") + "/")
    assert result["status"] == 200
    assert result["path"] == "a → b@sb → c"
    assert json.loads(result["body"])["next"]["version"] == "v9"
    traced = project.json("trace", result["trace_id"])
    assert traced["path"] == "a → b@sb → c"
    # A key the caller sent is replaced by the sandbox's, not followed by it.
    other = project.json("request", "--sandbox", "sb", "-H",
                         "baggage: a=1,laneway-key=other0000000", "GET", project.url("a") + "/")
    assert other["path"] == "a → b@sb → c"
    assert {hop["routing_key"] for hop in other["hops"]} == {result["routing_key"]}
    assert not any(hop["key_conflict"] for hop in other["hops"])


def test_runs_of_several_sandboxes_do_not_mix(project: Project) -> None:
    fork(project, "left", "b", "{VERSION: left}")
    fork(project, "right", "c", "{VERSION: right}")
    loop = f"for i in 1 2 3 4 5; do {CALL_A.format(path='/')}; done"
    with ThreadPoolExecutor(2) as pool:
        left, right = pool.map(lambda sb: run(project, "--sandbox", sb, "--", "sh", "-c", loop),
                               ["left", "right"])
    assert left[1]["forks_reached"] == {"b@left": 5}
    assert right[1]["forks_reached"] == {"c@right": 5}
    assert left[1]["hops"] == right[1]["hops"] == 15
    assert all("left" in line for line in left[1]["output_tail"] if "version" in line)
    assert all("right" in line for line in right[1]["output_tail"] if "version" in line)


def test_run_input_errors(project: Project) -> None:
    result = project.run("run", "--sandbox", "ghost", "--", "true", check=False)
    assert result.returncode == 1
    assert "sandbox 'ghost' not found" in result.stderr
    result = project.run("run", "--", "true", check=False)
    assert "either a sandbox or a route group" in result.stderr
